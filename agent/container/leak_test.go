package container

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/container/containertest"
	"github.com/keelvm/keel/init/reaper"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// TestExecLeak runs exec cycles in one container: fds, goroutines and
// children must stay flat. 200 cycles by default, 2000 with -long.
func TestExecLeak(t *testing.T) {
	n := 200
	if *long {
		n = 2000
	}
	if testing.Short() {
		n = 20
	}
	s := newSandbox(t)
	c, err := s.CreateContainer(ContainerConfig{ID: uniqueID("leak"), Spec: testSpec("/bin/sleep", "1000"), IO: newIO(t, false)})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	cycle := func(i int) {
		io := newIO(t, true)
		p, err := c.Exec(fmt.Sprintf("x%d", i), &specs.Process{Args: []string{"/bin/echo", "hi"}, Cwd: "/"}, io)
		if err != nil {
			t.Fatal(err)
		}
		if out := readAll(t, io); out != "hi\n" {
			t.Fatalf("cycle %d: output %q", i, out)
		}
		if st := waitStatus(t, p); st.Code != 0 {
			t.Fatalf("cycle %d: %+v", i, st)
		}
		c.ForgetProcess(p)
	}
	// Warm up (runtime threads, pools), then measure.
	for i := range 5 {
		cycle(-1 - i)
	}
	count := func() (int, int, []string) {
		// No runtime.GC() first: a descriptor (a pidfd in an os.Process)
		// that only a GC cleanup would close is a leak to report.
		snap := containertest.Take("keel-test")
		return snap.FDs, runtime.NumGoroutine(), snap.Children
	}
	heap := func() uint64 {
		// Collected first: HeapAlloc otherwise counts whatever garbage the
		// cycles left that no GC has run over yet.
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	time.Sleep(50 * time.Millisecond)
	h0 := heap() // its GC first: descriptors only a GC closes are not counted
	fd0, g0, ch0 := count()
	start := time.Now()
	for i := range n {
		cycle(i)
	}
	el := time.Since(start)
	// The last cycle's goroutines and descriptors go away asynchronously
	// (slower on a loaded machine): poll until they are back to the
	// baseline or a deadline passes, as settledDiff does, rather than read
	// once after a fixed sleep.
	leaked := func(fd, g int, ch []string) bool { return fd > fd0+2 || g > g0+5 || len(ch) > len(ch0) }
	fd1, g1, ch1 := count()
	for deadline := time.Now().Add(3 * time.Second); leaked(fd1, g1, ch1) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		fd1, g1, ch1 = count()
	}
	h1 := heap()
	t.Logf("%d exec cycles in %v (%v/cycle); fds %d->%d goroutines %d->%d children %d->%d heap %d->%d KiB",
		n, el, el/time.Duration(n), fd0, fd1, g0, g1, len(ch0), len(ch1), h0>>10, h1>>10)
	if h1 > h0+4<<20 {
		t.Errorf("heap grew by %d KiB over %d cycles", (h1-h0)>>10, n)
	}
	if leaked(fd1, g1, ch1) {
		t.Errorf("leak after %d cycles: fds %d->%d goroutines %d->%d children %v->%v", n, fd0, fd1, g0, g1, ch0, ch1)
	}
}

// TestLifecycleLeak runs container lifecycles (create, start, wait,
// remove): fds, goroutines and children must stay flat, counted without a
// GC. Each lifecycle used to keep the pidfd of its reaped init in
// libcontainer's os.Process until a GC, in about a third of the cycles:
// the thread that forked the init died (libcontainer's mount-source
// goroutine exits locked to it), the init became the main thread's child,
// and the orphan loop reaped it before libcontainer's wait could.
func TestLifecycleLeak(t *testing.T) {
	n := 30
	if testing.Short() {
		n = 10
	}
	containertest.NoGC(t)
	s := newSandbox(t)
	cycle := func() {
		c, err := s.CreateContainer(ContainerConfig{ID: uniqueID("life"), Spec: testSpec("/bin/true"), IO: newIO(t, false)})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		if st := waitStatus(t, c.InitProcess()); st.Code != 0 {
			t.Fatalf("init: %+v", st)
		}
		if err := s.RemoveContainer(context.Background(), c.ID(), 0); err != nil {
			t.Fatal(err)
		}
	}
	// Warm up libcontainer's process-wide caches (cgroupfs root fd,
	// securejoin handle, /dev/null) and the runtime's threads.
	for range 3 {
		cycle()
	}
	settle := func() (containertest.Snapshot, int) {
		time.Sleep(50 * time.Millisecond)
		return own(containertest.Take("keel-test")), runtime.NumGoroutine()
	}
	before, g0 := settle()
	for range n {
		cycle()
	}
	d := settledDiff(before)
	after, g1 := settle()
	// Goroutines of the last lifecycle end asynchronously: poll, as
	// settledDiff does for descriptors, rather than read once.
	for deadline := time.Now().Add(3 * time.Second); g1 > g0+5 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		g1 = runtime.NumGoroutine()
	}
	t.Logf("%d lifecycles: fds %d->%d goroutines %d->%d children %d->%d", n, before.FDs, after.FDs, g0, g1, len(before.Children), len(after.Children))
	if d != "" || g1 > g0+5 {
		t.Errorf("leak after %d lifecycles: %s; goroutines %d->%d", n, d, g0, g1)
	}
}

// TestNoLeftovers: created, failed and removed containers leave no mount,
// cgroup dir, child process or fd behind.
func TestNoLeftovers(t *testing.T) {
	containertest.NoGC(t)
	s := newSandbox(t)
	// Warm up the process-wide caches libcontainer keeps open (the cgroupfs
	// root fd, the securejoin root handle, /dev/null).
	run(t, s, testSpec("/bin/true"))
	if err := s.Destroy(context.Background()); err != nil {
		t.Fatal(err)
	}
	// No GC at all (NoGC): a descriptor only a GC cleanup closes (the
	// pidfd of an os.Process whose wait failed) is a leak. Each lifecycle used to leave one: the init's pidfd in
	// libcontainer, when the orphan loop reaped the init behind
	// libcontainer's back (see init/reaper's reapOrphans).
	time.Sleep(50 * time.Millisecond)
	before := own(containertest.Take("keel-test"))
	for i := range 3 {
		c, err := s.CreateContainer(ContainerConfig{ID: uniqueID("left"), Spec: testSpec("/bin/sleep", "100"), IO: newIO(t, true)})
		if err != nil {
			t.Fatal(err)
		}
		if i > 0 {
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
		}
		if i == 2 {
			if err := c.Pause(); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A create that fails late (program missing) rolls back.
	if _, err := s.CreateContainer(ContainerConfig{ID: uniqueID("bad"), Spec: testSpec("/bin/missing"), IO: newIO(t, false)}); err == nil {
		t.Fatal("create with a missing program succeeded")
	}
	if err := s.Destroy(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := settledDiff(before); d != "" {
		t.Errorf("leftovers: %s", d)
	}
}

// settledDiff compares the state with before until they match or 3 s have
// passed: a descriptor a finishing goroutine (of this test or an earlier
// one) still holds for a moment is not a leak, one that stays is. No GC is
// forced meanwhile.
func settledDiff(before containertest.Snapshot) string {
	deadline := time.Now().Add(3 * time.Second)
	for {
		time.Sleep(50 * time.Millisecond)
		d := before.Diff(own(containertest.Take("keel-test")))
		if d == "" || time.Now().After(deadline) {
			return d
		}
	}
}

// own keeps only this test process's container cgroups (uniqueID puts the
// pid in every id): other test binaries on the machine may use the same
// cgroup parent meanwhile.
func own(s containertest.Snapshot) containertest.Snapshot {
	mark := fmt.Sprintf("-%d-", os.Getpid())
	var mine []string
	for _, c := range s.Cgroups {
		if strings.Contains(filepath.Base(c), mark) {
			mine = append(mine, c)
		}
	}
	s.Cgroups = mine
	return s
}

func median(d []time.Duration) time.Duration {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2]
}

// BenchmarkLifecycle: in-process create+start+wait+destroy of /bin/true.
func BenchmarkLifecycle(b *testing.B) {
	s := newSandbox(b)
	var lat []time.Duration
	for i := 0; b.Loop(); i++ {
		t0 := time.Now()
		c, err := s.CreateContainer(ContainerConfig{ID: fmt.Sprintf("bench-%d-%d", os.Getpid(), i), Spec: testSpec("/bin/true"), IO: newIO(b, false)})
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Start(); err != nil {
			b.Fatal(err)
		}
		if st := waitStatus(b, c.InitProcess()); st.Code != 0 {
			b.Fatal(st)
		}
		if err := s.RemoveContainer(context.Background(), c.ID(), 0); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.ReportMetric(float64(median(lat).Microseconds())/1000, "median-ms")
}

// BenchmarkRuncRun: `runc run` (Debian's runc binary) of the same bundle.
func BenchmarkRuncRun(b *testing.B) {
	runc, err := exec.LookPath("runc")
	if err != nil {
		b.Skip("runc not installed")
	}
	if err := reaper.Start(); err != nil {
		b.Fatal(err)
	}
	bundle := b.TempDir()
	spec := testSpec("/bin/true")
	spec.Linux.CgroupsPath = ""
	js, _ := json.Marshal(spec)
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), js, 0o644); err != nil {
		b.Fatal(err)
	}
	root := b.TempDir()
	var lat []time.Duration
	for i := 0; b.Loop(); i++ {
		t0 := time.Now()
		id := fmt.Sprintf("runc-bench-%d-%d", os.Getpid(), i)
		cmd := exec.Command(runc, "--root", root, "run", "--bundle", bundle, id)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		st, err := reaper.Command(cmd)
		if err != nil || st.Code != 0 {
			b.Fatalf("runc run: %v %+v %s", err, st, out.String())
		}
		lat = append(lat, time.Since(t0))
	}
	b.ReportMetric(float64(median(lat).Microseconds())/1000, "median-ms")
}

// TestExecReapedBeforeWatchKeepsNoPidfd: an exec whose process is reaped by
// the orphan loop before the reaper watches it leaves no pidfd open. The
// window is real: a thread that forked the exec's process can die (a
// goroutine exits locked to it: libcontainer's mount-source goroutine of
// any concurrent create; here, libcontainer's own CPU-affinity start thread,
// which execCPUAffinity.initial makes it use for every exec), making the
// process the main thread's child, and a fast program exits before
// WatchThen marks it. The start hook holds that window open until the orphan
// loop has reaped it. The exec still reports its exit code. (Before,
// libcontainer's os.Process kept the process's pidfd until a GC.) A signal
// to such a process before its exit is recorded is no error (its released
// os.Process answers "process already released"; before, SignalProcess
// failed with "unable to signal process").
func TestExecReapedBeforeWatchKeepsNoPidfd(t *testing.T) {
	containertest.NoGC(t)
	s := newSandbox(t)
	spec := testSpec("sleep", "100")
	// libcontainer forks an exec from a locked thread that then exits.
	spec.Process.ExecCPUAffinity = &specs.CPUAffinity{Initial: "0"}
	id := uniqueID("reapedearly")
	c, err := s.CreateContainer(ContainerConfig{ID: id, Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.RemoveContainer(context.Background(), id, 0) })
	var before uint64
	reapedFirst := false
	startHook = func(execID, stage string) {
		if stage != "started" {
			return
		}
		// Hold the start until the orphan loop reaped the exited program.
		deadline := time.Now().Add(5 * time.Second)
		for reaper.Reaped() == before && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		reapedFirst = reaper.Reaped() > before
	}
	t.Cleanup(func() { startHook = nil })
	exec := func(i int) {
		t.Helper()
		before = reaper.Reaped()
		p, err := c.Exec(fmt.Sprintf("fast%d", i), specProcess("/bin/sh", "-c", "exit 5"), nil)
		if err != nil {
			t.Fatal(err)
		}
		// The window between the start's return and the exit being
		// recorded (p.done closed): the same process with done open.
		pending := &Process{ID: p.ID, Pid: p.Pid, lp: p.lp, released: p.released, done: make(chan struct{})}
		if err := pending.signal(unix.SIGTERM); err != nil {
			t.Fatalf("exec %d: signal to a process reaped before its watch, exit not yet recorded: %v", i, err)
		}
		if st := waitStatus(t, p); st.Code != 5 {
			t.Fatalf("exec %d: %+v, want exit code 5", i, st)
		}
		if !reapedFirst || !p.released {
			t.Fatalf("exec %d: the orphan loop did not reap the program before the watch (reaped %t, handle released %t: the window was not hit)", i, reapedFirst, p.released)
		}
		c.ForgetProcess(p)
	}
	exec(-1) // warm-up
	snap := own(containertest.Take("keel-test"))
	for i := range 3 {
		exec(i)
	}
	if d := settledDiff(snap); d != "" {
		t.Fatalf("after 3 execs reaped before their watch: %s", d)
	}
}
