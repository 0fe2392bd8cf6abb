// Package metrics keeps the agent's own counters and renders them in the
// Prometheus text exposition format for GetMetrics.
//
// It is deliberately tiny (no client library): a fixed histogram per RPC,
// process gauges read from /proc/self, and gauges other packages register as
// callbacks (containers, processes).
package metrics

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Buckets are the RPC latency histogram bounds in seconds.
var Buckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

type rpcStats struct {
	count   uint64
	errors  uint64
	sum     float64
	buckets []uint64 // cumulative-ready: counts per bucket, +Inf is count
}

// Registry collects metrics. The zero value is not usable; call New.
type Registry struct {
	mu     sync.Mutex
	rpcs   map[string]*rpcStats
	gauges map[string]gauge
}

type gauge struct {
	help string
	fn   func() float64
}

// New returns an empty registry.
func New() *Registry {
	return &Registry{rpcs: map[string]*rpcStats{}, gauges: map[string]gauge{}}
}

// ObserveRPC records one finished RPC.
func (r *Registry) ObserveRPC(method string, d time.Duration, failed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.rpcs[method]
	if s == nil {
		s = &rpcStats{buckets: make([]uint64, len(Buckets))}
		r.rpcs[method] = s
	}
	s.count++
	if failed {
		s.errors++
	}
	sec := d.Seconds()
	s.sum += sec
	for i, b := range Buckets {
		if sec <= b {
			s.buckets[i]++
			break
		}
	}
}

// Gauge registers a gauge computed at scrape time. name must be a valid
// Prometheus metric name; registering a name again replaces it.
func (r *Registry) Gauge(name, help string, fn func() float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gauges[name] = gauge{help, fn}
}

// Render returns the Prometheus text exposition of every metric.
func (r *Registry) Render() string {
	var b strings.Builder
	p := readProc()
	writeGauge(&b, "keel_agent_resident_memory_bytes", "Resident set size of the agent (VmRSS).", float64(p.rss))
	writeGauge(&b, "keel_agent_anon_memory_bytes", "Anonymous resident memory of the agent (RssAnon): what it costs beyond the shared, possibly DAX-mapped, binary.", float64(p.rssAnon))
	writeGauge(&b, "keel_agent_open_fds", "File descriptors open in the agent.", float64(p.fds))
	writeGauge(&b, "keel_agent_threads", "OS threads of the agent.", float64(p.threads))
	writeGauge(&b, "keel_agent_goroutines", "Goroutines in the agent.", float64(runtime.NumGoroutine()))
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	writeGauge(&b, "keel_agent_go_heap_inuse_bytes", "Go heap in use.", float64(ms.HeapInuse))
	writeMeminfo(&b)

	r.mu.Lock()
	defer r.mu.Unlock()
	names := make([]string, 0, len(r.gauges))
	for n := range r.gauges {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		writeGauge(&b, n, r.gauges[n].help, r.gauges[n].fn())
	}

	methods := make([]string, 0, len(r.rpcs))
	for m := range r.rpcs {
		methods = append(methods, m)
	}
	sort.Strings(methods)
	if len(methods) > 0 {
		b.WriteString("# HELP keel_agent_rpc_errors_total RPCs that returned an error.\n# TYPE keel_agent_rpc_errors_total counter\n")
		for _, m := range methods {
			fmt.Fprintf(&b, "keel_agent_rpc_errors_total{method=%q} %d\n", m, r.rpcs[m].errors)
		}
		b.WriteString("# HELP keel_agent_rpc_duration_seconds RPC latency.\n# TYPE keel_agent_rpc_duration_seconds histogram\n")
		for _, m := range methods {
			s := r.rpcs[m]
			var cum uint64
			for i, le := range Buckets {
				cum += s.buckets[i]
				fmt.Fprintf(&b, "keel_agent_rpc_duration_seconds_bucket{method=%q,le=%q} %d\n", m, strconv.FormatFloat(le, 'g', -1, 64), cum)
			}
			fmt.Fprintf(&b, "keel_agent_rpc_duration_seconds_bucket{method=%q,le=\"+Inf\"} %d\n", m, s.count)
			fmt.Fprintf(&b, "keel_agent_rpc_duration_seconds_sum{method=%q} %g\n", m, s.sum)
			fmt.Fprintf(&b, "keel_agent_rpc_duration_seconds_count{method=%q} %d\n", m, s.count)
		}
	}
	return b.String()
}

func writeGauge(b *strings.Builder, name, help string, v float64) {
	fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s gauge\n%s %s\n", name, help, name, name, strconv.FormatFloat(v, 'g', -1, 64))
}

// MeminfoItems are the /proc/meminfo lines exported as
// keel_guest_meminfo_bytes{item=...}: enough for the guest's used memory
// (MemTotal - MemFree - Buffers - Cached) and what is reclaimable.
var MeminfoItems = []string{"MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "Shmem", "AnonPages", "Slab"}

// writeMeminfo renders the guest's (the agent's kernel's) memory figures.
func writeMeminfo(b *strings.Builder) {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return
	}
	b.WriteString("# HELP keel_guest_meminfo_bytes A /proc/meminfo line of the guest.\n# TYPE keel_guest_meminfo_bytes gauge\n")
	for _, item := range MeminfoItems {
		fmt.Fprintf(b, "keel_guest_meminfo_bytes{item=%q} %d\n", item, StatusField(data, item))
	}
}

type procStats struct {
	rss     uint64
	rssAnon uint64
	fds     int
	threads int
}

func readProc() procStats {
	var p procStats
	if data, err := os.ReadFile("/proc/self/status"); err == nil {
		p.rss = StatusField(data, "VmRSS")
		p.rssAnon = StatusField(data, "RssAnon")
		p.threads = int(StatusField(data, "Threads"))
	}
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		p.fds = len(ents) - 1 // the ReadDir's own descriptor
	}
	return p
}

// StatusField returns a numeric field of /proc/PID/status (or of
// /proc/meminfo, same format); "kB" values are
// converted to bytes. It returns 0 when the field is absent.
func StatusField(status []byte, field string) uint64 {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != field {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			return 0
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0
		}
		if len(f) > 1 && f[1] == "kB" {
			n *= 1024
		}
		return n
	}
	return 0
}
