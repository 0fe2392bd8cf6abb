package main

import (
	"bytes"
	"strings"
	"testing"
)

// benchOutput is `go test -v -bench` output as go test 1.26 prints it
// (captured from a run): results, a skip with its message, a failure, a
// skipped sub-benchmark, log lines of a benchmark that ran.
const benchOutput = `goos: linux
goarch: amd64
pkg: github.com/keelvm/keel/tests/bench/containerbench
BenchmarkAgentLifecycle
BenchmarkAgentLifecycle-2   	      10	       100 ns/op	        30.0 cpu-ms/op
BenchmarkAgentLifecycle-2   	      10	       120 ns/op	        31.0 cpu-ms/op
BenchmarkAgentLifecycle-2   	      10	       110 ns/op	        32.0 cpu-ms/op
BenchmarkRuncRunTmpfs
BenchmarkRuncRunTmpfs-2     	      10	       200 ns/op	        60.0 cpu-ms/op
BenchmarkAgentExec
    wire_bench_test.go:12: a log line of a benchmark that ran
BenchmarkAgentExec-2        	      10	        50 ns/op
BenchmarkRuncExecTmpfs
    helpers_test.go:174: runc not installed
--- SKIP: BenchmarkRuncExecTmpfs
BenchmarkAgentInitStart
    init_bench_test.go:90: boom
--- FAIL: BenchmarkAgentInitStart
BenchmarkAgentStdoutRPC32KiB
BenchmarkAgentStdoutRPC32KiB/gc=policy
    wire_stdout_bench_test.go:40: no dd in the rootfs
--- SKIP: BenchmarkAgentStdoutRPC32KiB/gc=policy
BenchmarkAgentStdoutRPC32KiB/gc=GOGC=100
BenchmarkAgentStdoutRPC32KiB/gc=GOGC=100-2 	       1	 100 ns/op	  40.0 MB/s	 7000 rssanon-64MiB-KiB
BenchmarkStdoutReaderPath32KiB-2 	       6	 221769128 ns/op	 300.00 MB/s	 1281226 B/op	   24616 allocs/op
BenchmarkRawUnixCopy1MiB/pipe=64KiB-2 	      20	  88329663 ns/op	 750.00 MB/s	     179 B/op	       6 allocs/op
BenchmarkStdoutReaderPaired32KiB/wire-2 	       5	1688927914 ns/op	  39.73 MB/s	         0.1424 reader/raw	         0.1605 reader/raw-32KiB	         1.474 reader/rpc	         0.09662 rpc/raw
PASS
ok  	github.com/keelvm/keel/tests/bench/containerbench	10.0s
pkg: github.com/keelvm/keel/tests/bench/guestbench
BenchmarkGuestLifecycle
    guest_bench_test.go:31: VM tier: set KEEL_BENCH_VM=1 (make bench-vm)
--- SKIP: BenchmarkGuestLifecycle
PASS
`

// line returns the report's line for the figure named name.
func line(t *testing.T, out, name string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, name+"  ") {
			return l
		}
	}
	t.Fatalf("no line for %q in\n%s", name, out)
	return ""
}

func TestReport(t *testing.T) {
	r, err := parse(strings.NewReader(benchOutput))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	report(&buf, r)
	out := buf.String()
	for _, c := range []struct{ name, want []string }{
		// median 110 of the agent's runs over runc's 200, with the target
		{[]string{"P1 wire: keel-agent binary vs runc run, tmpfs state"}, []string{"0.550", "<= 0.5", "110 vs 200"}},
		{[]string{"P1 wire CPU: agent + its reaped inits vs runc + children"}, []string{"0.517"}},
		// the baseline skipped: not run, and its reason
		{[]string{"P2 wire: keel-agent binary vs runc exec, tmpfs state"}, []string{"not run", "<= 0.5", "BenchmarkRuncExecTmpfs skipped: runc not installed"}},
		{[]string{"container init start: keel-agent vs libcontainer-only"}, []string{"not run", "BenchmarkAgentInitStart failed: boom"}},
		{[]string{"P3 wire: keel-agent binary, 32 KiB reads, its GC policy, vs raw"}, []string{"not run", ">= 0.3", "BenchmarkAgentStdoutRPC32KiB/gc=policy skipped: no dd in the rootfs"}},
		{[]string{"P1 in guest: agent (vsock) vs runc run in guest"}, []string{"not run", "<= 0.5", "skipped: VM tier: set KEEL_BENCH_VM=1 (make bench-vm)"}},
		// Keel's client library: a ratio of MB/s, and a reported one,
		// with no P3 target (Kata's shim uses the generated client)
		{[]string{"P3 Keel client lib (outputreader, not Kata's shim), 32 KiB vs raw"}, []string{"0.400", "report"}},
		{[]string{"P3 paired wire: Keel client lib (outputreader, not Kata's shim) / raw"}, []string{"0.142", "report"}},
		{[]string{"P3 paired wire: Keel client lib (outputreader) / generated client"}, []string{"1.47"}},
		{[]string{"P3 wire: Keel client lib (outputreader, not Kata's shim) vs raw"}, []string{"not run", "report", "no result for BenchmarkAgentStdoutReader32KiB"}},
		// absent from the output altogether
		{[]string{"P1 create+start+wait+remove /bin/true vs runc run"}, []string{"not run", "<= 0.5", "no result for BenchmarkLifecycle"}},
		{[]string{"P6 QEMU start->first gated RPC, DAX on virtio-pmem (s)"}, []string{"not run", "<= 1.0", "no result for BenchmarkP6Boot"}},
	} {
		l := line(t, out, c.name[0])
		for _, w := range c.want {
			if !strings.Contains(l, w) {
				t.Errorf("%q lacks %q", l, w)
			}
		}
	}
	// Every figure prints, run or not.
	for _, p := range pairs {
		line(t, out, p.name)
	}
	for _, x := range reported {
		line(t, out, x.name)
	}
}

// TestIssue16Figures: every P-figure issue 16 asks make bench to print is
// in the tables with its target.
func TestIssue16Figures(t *testing.T) {
	targets := map[string]string{}
	for _, p := range pairs {
		targets[p.name] = p.target
	}
	for _, x := range reported {
		targets[x.name] = x.target
	}
	for _, want := range []string{
		"P1 create+start+wait+remove",                   // P1 in-process
		"P1 wire: keel-agent binary vs runc run",        // P1 over the wire
		"P1 in guest: agent (vsock) vs runc run",        // P1 in the guest
		"P1 in guest: agent (vsock) vs crun run",        // and crun's ratio
		"P2 exec /bin/true vs runc exec",                // P2 in-process
		"P2 wire: keel-agent binary vs runc exec",       // P2 over the wire
		"P2 in guest: agent exec (vsock) vs runc",       // P2 in the guest
		"P3 stdout RPC path, container dd, 32 KiB",      // P3 RPC path at Kata's read size
		"P3 wire: keel-agent binary, 32 KiB reads",      // P3 RPC path, real binary
		"P3 stdout fast path vs raw",                    // P3 fast path
		"P6 uptime when serving every RPC",              // P6 boot vs trivial init
		"P6 icount (guest work only)",                   // P6 without TCG's translation
		"P6 QEMU start->first gated RPC, DAX on virtio", // P6 QEMU start -> first RPC
		"guest memory used: Keel kernel+DAX vs",         // memory, guest
		"agent RssAnon: Keel kernel+DAX vs Debian",      // memory, agent
		"P3 VM: ReadStdout (32 KiB, as Kata) vs raw",    // VM stdout over ReadStdout
		"P3 VM: passfd stdout vs raw AF_VSOCK",          // VM stdout over passfd
	} {
		found := false
		for name, target := range targets {
			if strings.HasPrefix(name, want) {
				found = true
				if target == "" {
					t.Errorf("%q has no target", name)
				}
			}
		}
		if !found {
			t.Errorf("no figure %q", want)
		}
	}
}

// TestClientLibraryIsNotP3: issue 16's P3 is at the read size Kata's
// runtime uses, and Kata's shim uses the generated client, so the P3
// target sits on the generated client's rows; the rows of Keel's own
// client library (protocol/outputreader, benchmarks named *Reader* or arm
// "reader") are reported beside them, named as such, with no target.
func TestClientLibraryIsNotP3(t *testing.T) {
	type row struct{ name, target, bench, unit string }
	var rows []row
	for _, p := range pairs {
		rows = append(rows, row{p.name, p.target, p.keel, p.unit})
	}
	for _, x := range reported {
		rows = append(rows, row{x.name, x.target, x.bench, x.unit})
	}
	readers := 0
	for _, r := range rows {
		// The reader's figures: its benchmarks' own units, or its arm
		// ("reader...") of a paired one; not the generated client's arm.
		reader := strings.HasPrefix(r.unit, "reader") ||
			(strings.Contains(r.bench, "Reader") || strings.HasSuffix(r.bench, "/reader")) && !strings.HasPrefix(r.unit, "rpc") && !strings.HasPrefix(r.unit, "readstdout")
		if !reader {
			continue
		}
		readers++
		if r.target != "report" && r.target != "" {
			t.Errorf("%q (%s %s) carries target %q: Keel's client library is not P3's client", r.name, r.bench, r.unit, r.target)
		}
		if !strings.Contains(r.name, "Keel client lib (outputreader") {
			t.Errorf("%q (%s %s) does not say it is Keel's client library", r.name, r.bench, r.unit)
		}
	}
	if readers < 8 {
		t.Errorf("only %d client-library rows found", readers)
	}
	// And the generated client's rows at Kata's read size keep P3's target.
	for _, name := range []string{
		"P3 stdout RPC path, container dd, 32 KiB reads, vs raw",
		"P3 wire: keel-agent binary, 32 KiB reads, its GC policy, vs raw",
		"P3 paired (same iteration): RPC path 32 KiB vs raw, in process",
		"P3 paired: keel-agent binary, 32 KiB vs raw",
		"P3 VM: ReadStdout (32 KiB, as Kata) vs raw AF_VSOCK",
		"P3 VM paired: ReadStdout (generated client) / raw AF_VSOCK",
	} {
		found := false
		for _, r := range rows {
			if r.name == name {
				found = true
				if r.target != ">= 0.3" {
					t.Errorf("%q: target %q, want >= 0.3", name, r.target)
				}
			}
		}
		if !found {
			t.Errorf("no figure %q", name)
		}
	}
}
