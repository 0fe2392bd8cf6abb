package metrics

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/tests/promtext"
)

func TestRender(t *testing.T) {
	r := New()
	r.ObserveRPC("/grpc.Health/Check", 700*time.Microsecond, false)
	r.ObserveRPC("/grpc.Health/Check", 3*time.Millisecond, true)
	r.ObserveRPC("/grpc.Health/Check", 20*time.Second, false)
	containers := 2.0
	r.Gauge("keel_containers", "Containers.", func() float64 { return containers })
	out := r.Render()
	for _, want := range []string{
		`keel_agent_rpc_duration_seconds_bucket{method="/grpc.Health/Check",le="0.0005"} 0`,
		`keel_agent_rpc_duration_seconds_bucket{method="/grpc.Health/Check",le="0.001"} 1`,
		`keel_agent_rpc_duration_seconds_bucket{method="/grpc.Health/Check",le="0.005"} 2`,
		`keel_agent_rpc_duration_seconds_bucket{method="/grpc.Health/Check",le="10"} 2`,
		`keel_agent_rpc_duration_seconds_bucket{method="/grpc.Health/Check",le="+Inf"} 3`,
		`keel_agent_rpc_duration_seconds_count{method="/grpc.Health/Check"} 3`,
		`keel_agent_rpc_errors_total{method="/grpc.Health/Check"} 1`,
		"keel_containers 2\n",
		"# TYPE keel_agent_resident_memory_bytes gauge",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	if strings.Contains(out, "keel_agent_resident_memory_bytes 0\n") {
		t.Error("RSS read as 0")
	}
}

// TestMemoryGauges reads this process's RssAnon and the machine's meminfo
// back from the rendered text and checks them against /proc.
func TestMemoryGauges(t *testing.T) {
	out := New().Render()
	anon := metricValue(t, out, "keel_agent_anon_memory_bytes")
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	// The heap moves between the two reads; same order of magnitude.
	if want := float64(StatusField(status, "RssAnon")); anon <= 0 || anon > 4*want || anon < want/4 {
		t.Errorf("keel_agent_anon_memory_bytes = %g, /proc/self/status RssAnon = %g", anon, want)
	}
	meminfo, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	total := metricValue(t, out, `keel_guest_meminfo_bytes{item="MemTotal"}`)
	if want := float64(StatusField(meminfo, "MemTotal")); total != want || total == 0 {
		t.Errorf("MemTotal = %g, /proc/meminfo says %g", total, want)
	}
	for _, item := range MeminfoItems {
		if v := metricValue(t, out, `keel_guest_meminfo_bytes{item="`+item+`"}`); v < 0 || v > total {
			t.Errorf("%s = %g, outside 0..MemTotal", item, v)
		}
	}
}

func metricValue(t *testing.T, text, name string) float64 {
	t.Helper()
	all, err := promtext.Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	f, ok := all[name]
	if !ok {
		t.Fatalf("no %s in\n%s", name, text)
	}
	return f
}

func TestStatusField(t *testing.T) {
	s := []byte("Name:\tx\nVmRSS:\t  1234 kB\nThreads:\t7\nBad:\tzz\n")
	if got := StatusField(s, "VmRSS"); got != 1234*1024 {
		t.Errorf("VmRSS = %d", got)
	}
	if got := StatusField(s, "Threads"); got != 7 {
		t.Errorf("Threads = %d", got)
	}
	if StatusField(s, "Bad") != 0 || StatusField(s, "Missing") != 0 {
		t.Error("bad or missing field not 0")
	}
}
