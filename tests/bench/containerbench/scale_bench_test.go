package containerbench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/container/containertest"
	"github.com/keelvm/keel/agent/containers"
	pb "github.com/keelvm/keel/protocol/grpc"
)

// scaleResult is one run of scale.
type scaleResult struct {
	create []time.Duration // CreateContainer+StartContainer of container i
	rssKiB int             // VmRSS growth of the agent (this process) with all live
	remove time.Duration   // removing all of them
}

// settledRSS is VmRSS after a GC that returns free memory to the kernel, so
// that the Go heap's slack does not count as per-container state.
func settledRSS(tb testing.TB) int {
	tb.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	kib, err := vmRSSKiB()
	if err != nil {
		tb.Fatal(err)
	}
	return kib
}

// scale creates n running containers (`sleep 1000`) through the handlers,
// timing each create+start, measures the agent's RSS growth with all of
// them live, removes them and fails when anything is left: a process, a
// cgroup dir, a mount, an fd or libcontainer state.
func scale(tb testing.TB, n int) scaleResult {
	tb.Helper()
	r, root := newRPC(tb, containers.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// Warm up what libcontainer and the runtime set up once per process
	// (the cgroupfs root fd, /dev/null, threads), so neither the first
	// latencies nor the RSS baseline carry it.
	if err := runContainer(ctx, r, "warm", "/bin/sleep", "1000"); err != nil {
		tb.Fatal(err)
	}
	if _, err := r.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: "warm"}); err != nil {
		tb.Fatal(err)
	}
	rss0 := settledRSS(tb)
	// Counted after settledRSS's GC and compared with no GC after the
	// removes: a pidfd only a GC would close is a leak.
	before := leftovers(root)

	res := scaleResult{create: make([]time.Duration, 0, n)}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("s%d", i)
		t0 := time.Now()
		if err := runContainer(ctx, r, ids[i], "/bin/sleep", "1000"); err != nil {
			tb.Fatalf("container %d of %d: %v", i+1, n, err)
		}
		res.create = append(res.create, time.Since(t0))
	}
	res.rssKiB = settledRSS(tb) - rss0
	if live := containertest.Take(cgParent); len(live.Cgroups) < n {
		tb.Fatalf("%d containers running, %d container cgroup dirs", n, len(live.Cgroups))
	}

	t0 := time.Now()
	for _, id := range ids {
		if _, err := r.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: id}); err != nil {
			tb.Fatalf("RemoveContainer %s: %v", id, err)
		}
	}
	res.remove = time.Since(t0)

	time.Sleep(100 * time.Millisecond)
	if d := before.Diff(leftovers(root)); d != "" {
		tb.Errorf("left after removing %d containers: %s", n, d)
	}
	if st, err := os.ReadDir(filepath.Join(root, "containers")); err != nil || len(st) != 0 {
		tb.Errorf("libcontainer state left: %v %v", st, err)
	}
	return res
}

// leftovers is what a removed container could leave: child processes, fds
// and cgroup dirs of this process, and mounts of the rootfs or the state
// root. Other mounts are not counted: other test binaries mount and unmount
// in the same mount namespace at the same time.
func leftovers(stateRoot string) containertest.Snapshot {
	s := containertest.Take(cgParent)
	s.Mounts = 0
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, rootfs) || strings.Contains(line, stateRoot) {
			s.Mounts++
		}
	}
	return s
}

// BenchmarkCreate200 runs -scale-n (200) live containers. It reports the
// create+start latency of the first ten (p50, p99) against the p99 of the
// last ten (p99-ratio, target <= 2) and the agent's RSS per live container
// (target <= 100 KiB). One iteration takes seconds, so b.Loop runs it once
// per -count.
func BenchmarkCreate200(b *testing.B) {
	n := *scaleN
	if n < 20 {
		b.Fatalf("-scale-n %d: need at least 20 (first and last ten)", n)
	}
	var first, last []time.Duration
	var rss, removed float64
	runs := 0
	for b.Loop() {
		res := scale(b, n)
		first = append(first, res.create[:10]...)
		last = append(last, res.create[n-10:]...)
		rss += float64(res.rssKiB) / float64(n)
		removed += ms(res.remove) / float64(n)
		runs++
	}
	b.ReportMetric(float64(n), "containers")
	b.ReportMetric(ms(percentile(first, 0.5)), "first10-p50-ms")
	b.ReportMetric(ms(percentile(first, 0.99)), "first10-p99-ms")
	b.ReportMetric(ms(percentile(last, 0.99)), "last10-p99-ms")
	b.ReportMetric(float64(percentile(last, 0.99))/float64(percentile(first, 0.99)), "p99-ratio")
	// The p99 of ten is their maximum: one stall on a shared machine moves
	// it. The p50 ratio tells such a stall from a growth with n.
	b.ReportMetric(ms(percentile(last, 0.5)), "last10-p50-ms")
	b.ReportMetric(float64(percentile(last, 0.5))/float64(percentile(first, 0.5)), "p50-ratio")
	b.ReportMetric(rss/float64(runs), "rss-KiB/container")
	b.ReportMetric(removed/float64(runs), "remove-ms/container")
}
