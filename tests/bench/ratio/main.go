// Command ratio reads `go test -bench` output and prints each Keel benchmark
// as a ratio against the baseline it is paired with (runc, a raw socket
// copy, ...), using the median of the -count runs of each.
package main

import (
	"bufio"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

// pair is one comparison. Unit "ns/op": ratio = keel/baseline (lower is
// better); unit "MB/s": ratio = keel/baseline (higher is better).
type pair struct {
	name, keel, baseline, unit, target string
}

var pairs = []pair{
	{"P1 create+start+wait+remove /bin/true vs runc run", "BenchmarkLifecycle", "BenchmarkRuncRun", "ns/op", "<= 0.5"},
	{"P2 exec /bin/true vs runc exec", "BenchmarkExec", "BenchmarkRuncExec", "ns/op", "<= 0.5"},
	{"P1 wire: keel-agent binary vs runc run, tmpfs state", "BenchmarkAgentLifecycle", "BenchmarkRuncRunTmpfs", "ns/op", "<= 0.5"},
	{"P2 wire: keel-agent binary vs runc exec, tmpfs state", "BenchmarkAgentExec", "BenchmarkRuncExecTmpfs", "ns/op", "<= 0.5"},
	{"P1 wire CPU: agent + its reaped inits vs runc + children", "BenchmarkAgentLifecycle", "BenchmarkRuncRunTmpfs", "cpu-ms/op", ""},
	{"container init start: keel-agent vs libcontainer-only", "BenchmarkAgentInitStart", "BenchmarkSlimInitStart", "ns/op", ""},
	{"P3 stdout fast path vs raw unix copy", "BenchmarkStdoutFastPath", "BenchmarkRawUnixCopy", "MB/s", ">= 0.95"},
	{"P3 stdout RPC path vs raw unix copy", "BenchmarkStdoutRPCPath", "BenchmarkRawUnixCopy", "MB/s", ">= 0.3"},
	{"P3 stdout RPC path, agent side only, vs raw", "BenchmarkStdoutRPCPathAgentSide", "BenchmarkRawUnixCopy", "MB/s", ""},
	{"P3 stdout RPC path, generated handler (proto.Marshal), vs raw", "BenchmarkStdoutRPCPathGenerated", "BenchmarkRawUnixCopy", "MB/s", ""},
	{"P3 stdout RPC path, container dd, 32 KiB reads, vs raw", "BenchmarkStdoutRPCPath32KiB/pipe=64KiB", "BenchmarkRawUnixCopy1MiB/pipe=64KiB", "MB/s", ">= 0.3"},
	{"P3 stdout RPC path, 1 MiB reads, 1 MiB pipe, vs raw", "BenchmarkStdoutRPCPath1MiB/pipe=1MiB", "BenchmarkRawUnixCopy1MiB/pipe=1MiB", "MB/s", ">= 0.3"},
	{"P3 wire: keel-agent binary, 32 KiB reads, its GC policy, vs raw", "BenchmarkAgentStdoutRPC32KiB/gc=policy", "BenchmarkRawUnixCopy1MiB/pipe=64KiB", "MB/s", ">= 0.3"},
	{"P3 wire: GC policy vs GOGC=100, agent CPU per MB", "BenchmarkAgentStdoutRPC32KiB/gc=policy", "BenchmarkAgentStdoutRPC32KiB/gc=GOGC=100", "agent-cpu-ms/MB", ""},
	{"P3 wire: GC policy vs GOGC=100, agent RssAnon after 64 MiB", "BenchmarkAgentStdoutRPC32KiB/gc=policy", "BenchmarkAgentStdoutRPC32KiB/gc=GOGC=100", "rssanon-KiB", ""},
	// VM tier (tests/bench/guestbench, KEEL_BENCH_VM=1): timed in one
	// Debian guest, the agent over AF_VSOCK, runc/crun inside the guest.
	{"P1 in guest: agent (vsock) vs runc run in guest", "BenchmarkGuestLifecycle", "BenchmarkGuestRuncRun", "ns/op", "<= 0.5"},
	{"P1 in guest: agent (vsock) vs crun run in guest", "BenchmarkGuestLifecycle", "BenchmarkGuestCrunRun", "ns/op", ""},
	{"P2 in guest: agent exec (vsock) vs runc exec", "BenchmarkGuestExec", "BenchmarkGuestRuncExec", "ns/op", "<= 0.5"},
	{"P2 in guest: agent exec (vsock) vs crun exec", "BenchmarkGuestExec", "BenchmarkGuestCrunExec", "ns/op", ""},
	// VM tier (tests/bench/vmbench, KEEL_BENCH_VM=1).
	{"P3 VM: ReadStdout (32 KiB, as Kata) vs raw AF_VSOCK", "BenchmarkStdoutVsock/readstdout", "BenchmarkStdoutVsock/raw", "MB/s", ">= 0.3"},
	{"P3 VM: passfd stdout vs raw AF_VSOCK", "BenchmarkStdoutVsock/passfd", "BenchmarkStdoutVsock/raw", "MB/s", ">= 0.95"},
	{"guest memory used: Keel kernel+DAX vs Debian+initramfs", "BenchmarkGuestMemory/keel-dax", "BenchmarkGuestMemory/debian-initramfs", "used-KiB", ""},
	{"agent RssAnon: Keel kernel+DAX vs Debian+initramfs", "BenchmarkGuestMemory/keel-dax", "BenchmarkGuestMemory/debian-initramfs", "agent-anon-KiB", ""},
}

// reported are metrics a benchmark computes itself (already a ratio or a
// per-item figure), printed as they are.
var reported = []struct{ name, bench, unit, target string }{
	{"P3 stdout fast path / raw unix copy, paired", "BenchmarkStdoutFastPathPaired", "fast/raw", ">= 0.95"},
	{"P3 fast path by copy loop / raw unix copy, paired", "BenchmarkStdoutFastPathPaired", "copy/raw", ""},
	{"P7 create p99, containers 191-200 vs 1-10", "BenchmarkCreate200", "p99-ratio", "<= 2"},
	{"P7 create p50, containers 191-200 vs 1-10", "BenchmarkCreate200", "p50-ratio", ""},
	{"P7 agent RSS per live container (KiB)", "BenchmarkCreate200", "rss-KiB/container", "<= 100"},
	// VM tier (tests/bench/vmbench, KEEL_BENCH_VM=1).
	{"P6 uptime at listener ready, keel / trivial init", "BenchmarkP6Boot", "ready-ratio", "<= 1.1 (+20 ms)"},
	{"P6 keel ready minus (1.1 x trivial + 20 ms), ms", "BenchmarkP6Boot", "p6-excess-ms", "<= 0"},
	{"P6 icount (guest work only): keel / trivial ready", "BenchmarkP6BootIcount", "ready-ratio", "<= 1.1 (+20 ms)"},
	{"P6 icount: keel minus (1.1 x trivial + 20 ms), ms", "BenchmarkP6BootIcount", "p6-excess-ms", "<= 0"},
	{"P6 icount: keel init_start->listener_ready (ms)", "BenchmarkP6BootIcount", "keel-init-ms", ""},
	{"P6 keel-agent init_start->listener_ready (ms)", "BenchmarkP6Boot", "keel-init-ms", ""},
	{"P6 trivial init main->listener (ms)", "BenchmarkP6Boot", "trivial-init-ms", ""},
	{"P6 QEMU start->first RPC, DAX on virtio-pmem (s)", "BenchmarkP6Boot", "keel-first-rpc-s", "<= 1.0"},
	{"P6 QEMU start->first RPC, DAX on nvdimm (s)", "BenchmarkBootNVDIMM", "keel-first-rpc-s", "<= 1.0"},
	{"P6 QEMU CPU s to first RPC, virtio-pmem (idle ~wall)", "BenchmarkP6Boot", "keel-first-rpc-cpu-s", "<= 1.0"},
	{"P6 QEMU CPU s to first answer, trivial init", "BenchmarkP6Boot", "trivial-first-cpu-s", ""},
	{"P6 QEMU CPU s to first RPC, nvdimm", "BenchmarkBootNVDIMM", "keel-first-rpc-cpu-s", ""},
	{"guest used KiB, Keel kernel+DAX, 1 idle container", "BenchmarkGuestMemory/keel-dax", "used-KiB", ""},
	{"agent RssAnon KiB, Keel kernel+DAX, 1 idle container", "BenchmarkGuestMemory/keel-dax", "agent-anon-KiB", ""},
	{"P3 VM: passfd / raw AF_VSOCK, paired", "BenchmarkStdoutVsockPaired", "passfd/raw", ">= 0.95"},
	{"P3 VM: QEMU CPU ms/MB while streaming, passfd", "BenchmarkStdoutVsockPaired", "passfd-qemu-cpu-ms/MB", ""},
	{"P3 VM: QEMU CPU ms/MB while streaming, raw", "BenchmarkStdoutVsockPaired", "raw-qemu-cpu-ms/MB", ""},
	// VM tier (tests/bench/guestbench): the same, paired round by round.
	{"P1 in guest, paired: agent (vsock) / runc run", "BenchmarkGuestPairedRun", "agent/runc", "<= 0.5"},
	{"P1 in guest, paired: agent (vsock) / crun run", "BenchmarkGuestPairedRun", "agent/crun", ""},
	{"P2 in guest, paired: agent exec (vsock) / runc exec", "BenchmarkGuestPairedExec", "agent/runc", "<= 0.5"},
	{"P2 in guest, paired: agent exec (vsock) / crun exec", "BenchmarkGuestPairedExec", "agent/crun", ""},
	// VM tier (tests/bench/guestbench): cgroup2 favordynmods A/B, paired.
	{"in guest: cgroup migration, favordynmods on/off", "BenchmarkGuestCgroupMigrate", "on/off", ""},
	{"P1 in guest: favordynmods on/off (paired)", "BenchmarkGuestLifecycleCgroup2", "on/off", ""},
}

func main() {
	vals := map[string]map[string][]float64{} // bench name -> unit -> values
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 { // strip -GOMAXPROCS
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			if vals[name] == nil {
				vals[name] = map[string][]float64{}
			}
			vals[name][f[i+1]] = append(vals[name][f[i+1]], v)
		}
	}
	fmt.Println("\nratio                                                  keel/baseline  target")
	for _, p := range pairs {
		k, kok := median(vals[p.keel][p.unit])
		b, bok := median(vals[p.baseline][p.unit])
		if !kok || !bok || b == 0 {
			fmt.Printf("%-54s %-14s %s\n", p.name, "not run", p.target)
			continue
		}
		fmt.Printf("%-54s %-14.3f %s   (%s: %.4g vs %.4g)\n", p.name, k/b, p.target, p.unit, k, b)
	}
	for _, r := range reported {
		v, ok := median(vals[r.bench][r.unit])
		if !ok {
			fmt.Printf("%-54s %-14s %s\n", r.name, "not run", r.target)
			continue
		}
		fmt.Printf("%-54s %-14.3f %s\n", r.name, v, r.target)
	}
}

func median(v []float64) (float64, bool) {
	if len(v) == 0 {
		return 0, false
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2], true
}
