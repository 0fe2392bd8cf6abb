package reaper

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	code := 0
	if err := RunMain(func() { code = m.Run() }); err != nil {
		panic(err)
	}
	if code == 0 && !ranOnMain {
		fmt.Println("orphan loop did not run on the main thread")
		code = 1
	}
	os.Exit(code)
}

var ranOnMain = func() bool { return unix.Gettid() == unix.Getpid() }()

// children lists this process's children as "pid state".
func children(t *testing.T) []string {
	t.Helper()
	self := strconv.Itoa(os.Getpid())
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) > 1 && f[1] == self {
			out = append(out, e.Name()+" "+f[0])
		}
	}
	return out
}

func waitNoChildren(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if len(children(t)) == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("children left (zombies?): %v", children(t))
}

// statusWithin returns the status ch delivers, failing the test (what: no
// status) when none comes within 10 s.
func statusWithin(t *testing.T, ch <-chan ExitStatus, what string) ExitStatus {
	t.Helper()
	select {
	case st := <-ch:
		return st
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no status in 10 s", what)
		return ExitStatus{}
	}
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestCommandStatusAndOutput(t *testing.T) {
	for _, tc := range []struct {
		script string
		code   int
		sig    unix.Signal
	}{
		{"echo hi", 0, 0},
		{"echo hi; exit 3", 3, 0},
		{"echo hi; kill -9 $$", 137, unix.SIGKILL},
		{"echo hi; kill -15 $$", 143, unix.SIGTERM},
	} {
		var out bytes.Buffer
		cmd := exec.Command("/bin/sh", "-c", tc.script)
		cmd.Stdout = &out
		st, err := Command(cmd)
		if err != nil {
			t.Fatalf("%q: %v", tc.script, err)
		}
		if st.Code != tc.code || st.Signal != tc.sig || st.Pid != cmd.Process.Pid {
			t.Errorf("%q: got %+v, want code %d signal %v", tc.script, st, tc.code, tc.sig)
		}
		if out.String() != "hi\n" {
			t.Errorf("%q: stdout %q", tc.script, out.String())
		}
	}
	if _, err := Command(exec.Command("/nonexistent/binary")); err == nil {
		t.Error("starting a missing binary: want an error")
	}
	waitNoChildren(t)
}

func TestOrphansReaped(t *testing.T) {
	before := Reaped()
	// Each shell leaves 5 background children that are re-parented to us.
	for range 4 {
		st, err := Command(exec.Command("/bin/sh", "-c", "for i in 1 2 3 4 5; do sleep 0.05 & done; exit 0"))
		if err != nil || st.Code != 0 {
			t.Fatalf("%+v %v", st, err)
		}
	}
	waitNoChildren(t)
	if n := Reaped() - before; n < 20 {
		t.Errorf("reaped %d processes, want >= 20", n)
	}
}

func TestWatchExactlyOnce(t *testing.T) {
	cmd := exec.Command("/bin/sh", "-c", "exit 7")
	started := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch, err := Watch(cmd.Process.Pid, started)
	if err != nil {
		t.Fatal(err)
	}
	if st := statusWithin(t, ch, "watched process"); st.Code != 7 || st.Pid != cmd.Process.Pid {
		t.Errorf("got %+v", st)
	}
	select {
	case st, ok := <-ch:
		t.Fatalf("second delivery %+v %v", st, ok)
	case <-time.After(100 * time.Millisecond):
	}
	if Watched(cmd.Process.Pid) {
		t.Error("pid still watched after delivery")
	}
	_ = cmd.Wait()
	waitNoChildren(t)
}

func TestWatchAfterExitAndSignal(t *testing.T) {
	// The process is a zombie before Watch: its pidfd is readable at once.
	cmd := exec.Command("/bin/sh", "-c", "kill -TERM $$")
	started := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Contains(children(t), strconv.Itoa(pid)+" Z") {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d never became a zombie: %v", pid, children(t))
		}
		time.Sleep(5 * time.Millisecond)
	}
	ch, err := Watch(pid, started)
	if err != nil {
		t.Fatal(err)
	}
	if st := statusWithin(t, ch, "zombie watched"); st.Code != 128+int(unix.SIGTERM) || st.Signal != unix.SIGTERM {
		t.Errorf("got %+v", st)
	}
	_ = cmd.Wait()
}

// TestOwnWaitsNotStolen: children waited by their own goroutine (os/exec,
// libcontainer) are never taken by the orphan loop, while it reaps the
// orphans they leave, with no lock between the two.
func TestOwnWaitsNotStolen(t *testing.T) {
	before := Reaped()
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Go(func() {
			code := i % 7
			cmd := exec.Command("/bin/sh", "-c", fmt.Sprintf("sleep 0.3 & exit %d", code))
			err := cmd.Run()
			if got := cmd.ProcessState; got == nil || got.ExitCode() != code {
				errs <- fmt.Errorf("child %d: want exit %d, got %v (%v)", i, code, got, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	waitNoChildren(t)
	if n := Reaped() - before; n < 40 {
		t.Errorf("orphan loop reaped %d, want the 40 orphaned sleeps", n)
	}
}

// TestBlockedWaiterBlocksNothing: a goroutine that started a child and
// never waits it (a stalled start) does not stop orphans from being reaped
// nor other processes from being watched.
func TestBlockedWaiterBlocksNothing(t *testing.T) {
	stalled := exec.Command("/bin/sh", "-c", "exit 0")
	if err := stalled.Start(); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(stalled.Process.Pid)
	before := Reaped()
	st, err := Command(exec.Command("/bin/sh", "-c", "sleep 0.01 & sleep 0.01 & exit 0"))
	if err != nil || st.Code != 0 {
		t.Fatal(st, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for Reaped()-before < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("orphans not reaped while a child was unwaited: %v", children(t))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !slices.Contains(children(t), pid+" Z") {
		t.Errorf("the unwaited child %s was taken from its owner: %v", pid, children(t))
	}
	if err := stalled.Wait(); err != nil || stalled.ProcessState.ExitCode() != 0 {
		t.Errorf("owner's wait: %v", err)
	}
}

// TestWatchUsesNoThreadPerProcess: watching many processes costs no OS
// thread each (pidfds are polled by the netpoller).
func TestWatchUsesNoThreadPerProcess(t *testing.T) {
	const n = 200
	var cmds []*exec.Cmd
	var chans []<-chan ExitStatus
	for range n {
		cmd := exec.Command("/bin/sleep", "30")
		started := time.Now()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		ch, err := Watch(cmd.Process.Pid, started)
		if err != nil {
			t.Fatal(err)
		}
		cmds, chans = append(cmds, cmd), append(chans, ch)
	}
	threads := threadCount(t)
	for _, c := range cmds {
		_ = c.Process.Kill()
	}
	for i, ch := range chans {
		if st := statusWithin(t, ch, fmt.Sprintf("process %d", i)); st.Signal != unix.SIGKILL {
			t.Errorf("process %d: %+v", i, st)
		}
	}
	if threads > n/4 {
		t.Errorf("%d OS threads while watching %d processes", threads, n)
	}
	for _, c := range cmds {
		_ = c.Wait()
	}
}

func threadCount(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Fatal("no Threads line")
	return 0
}

func TestRunMainOffMainThread(t *testing.T) {
	ran := false
	if err := RunMain(func() { ran = true }); !errors.Is(err, ErrNotMainThread) || !ran {
		t.Fatalf("RunMain from a test goroutine: err %v, ran %v", err, ran)
	}
}

func TestEarlyBounded(t *testing.T) {
	r.mu.Lock()
	n := len(r.early)
	r.mu.Unlock()
	if n > MaxEarly {
		t.Fatalf("early map has %d entries", n)
	}
	for i := range MaxEarly + 10 {
		r.deliver(ExitStatus{Pid: 1<<30 + i})
	}
	r.mu.Lock()
	n = len(r.early)
	r.mu.Unlock()
	if n > MaxEarly {
		t.Fatalf("early map grew to %d", n)
	}
}

func TestRegisterSinceDropsStaleStatus(t *testing.T) {
	// An orphan's status kept for pid P must not be delivered to a newer
	// process that reuses P.
	const pid = 1<<30 - 7
	r.deliver(ExitStatus{Pid: pid, Code: 42})
	time.Sleep(time.Millisecond)
	ch := RegisterSince(pid, time.Now())
	select {
	case st := <-ch:
		t.Fatalf("stale status delivered: %+v", st)
	default:
	}
	r.deliver(ExitStatus{Pid: pid, Code: 1})
	if st := <-ch; st.Code != 1 {
		t.Fatalf("got %+v", st)
	}
	// Without a start time the kept status is delivered.
	r.deliver(ExitStatus{Pid: pid, Code: 9})
	if st := <-Register(pid); st.Code != 9 {
		t.Fatalf("got %+v", st)
	}
}

// TestWatchedOrphanLeftToItsOwner: a watched process whose forking thread
// died is re-parented to the main thread, where the orphan loop could reap
// it. That happens to container inits: libcontainer's mount-source
// goroutine runs on the thread that forked the init, locks it and exits, so
// the thread dies. The orphan loop must leave a watched process to its
// watcher, whose reap (the owner's os.Process wait) then succeeds: a failed
// one leaves the owner's pidfd open until a garbage collection.
func TestWatchedOrphanLeftToItsOwner(t *testing.T) {
	const n = 40
	before := openFDs(t)
	stolen := 0
	for i := range n {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		// The child waits for EOF on stdin, so it outlives the thread
		// that forked it.
		cmd := exec.Command("/bin/sh", "-c", "read x; exit 3")
		cmd.Stdin = r
		started := time.Now()
		forkFromDyingThread(t, cmd, nil)
		r.Close()
		reapErr := errors.New("reap not called")
		st, err := WatchThen(cmd.Process.Pid, started, func() (unix.WaitStatus, error) {
			ps, err := cmd.Process.Wait()
			reapErr = err
			if err != nil {
				return 0, err
			}
			return unix.WaitStatus(ps.Sys().(syscall.WaitStatus)), nil
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		w.Close() // the child exits
		if s := statusWithin(t, st, fmt.Sprintf("cycle %d", i)); s.Code != 3 {
			t.Fatalf("cycle %d: %+v", i, s)
		}
		if reapErr != nil {
			stolen++
		}
	}
	// No runtime.GC(): an os.Process whose wait failed keeps its pidfd
	// until a GC cleanup, which is the leak this test is about.
	after := openFDs(t)
	t.Logf("%d watched orphans: %d reaped behind their owner's back; fds %d -> %d", n, stolen, before, after)
	if stolen > 0 || after > before {
		t.Errorf("%d of %d watched processes were reaped by the orphan loop; fds %d -> %d", stolen, n, before, after)
	}
}

// TestStatusKeptWhenReapFails: a reap function that reaped the process but
// reports an error (libcontainer's Wait failing after its wait4) still
// leaves the watcher with the status it read: the process's waiters get it
// instead of waiting forever.
func TestStatusKeptWhenReapFails(t *testing.T) {
	cmd := exec.Command("/bin/sh", "-c", "read x; exit 7")
	w, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	st, err := WatchThen(pid, time.Now(), func() (unix.WaitStatus, error) {
		var ws unix.WaitStatus
		if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
			return 0, err
		}
		return 0, errors.New("reaped, then failed")
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.Close() // the child exits 7
	if s := statusWithin(t, st, "after the reap function failed"); s.Code != 7 {
		t.Fatalf("status %+v, want exit 7", s)
	}
}

// TestWatchThenReleasesWhenReapedFirst: a process whose forking thread died
// and that exited before WatchThen was called is reaped by the orphan loop
// first. WatchThen then delivers the kept status, does not call reap (its
// wait could only fail) and calls release, so the owner drops its handle:
// with release closing the os.Process's pidfd, no descriptor is left, no
// GC needed.
func TestWatchThenReleasesWhenReapedFirst(t *testing.T) {
	old := debug.SetGCPercent(-1) // a GC would close a leaked pidfd
	defer debug.SetGCPercent(old)
	before := openFDs(t)
	for i := range 5 {
		cmd := exec.Command("/bin/sh", "-c", "exit 4")
		reaped := Reaped()
		started := time.Now()
		forkFromDyingThread(t, cmd, nil)
		// Gone from the pid table only once reaped (a zombie is there).
		deadline := time.Now().Add(10 * time.Second)
		for Reaped() == reaped || unix.Kill(cmd.Process.Pid, 0) == nil {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the orphan loop never reaped the exited child", i)
			}
			time.Sleep(time.Millisecond)
		}
		reapCalled, released := false, false
		st, err := WatchThen(cmd.Process.Pid, started, func() (unix.WaitStatus, error) {
			reapCalled = true
			return 0, errors.New("reaped already")
		}, func() {
			released = true
			cmd.Process.Release()
		})
		if err != nil {
			t.Fatal(err)
		}
		if s := statusWithin(t, st, fmt.Sprintf("round %d: a process reaped before its watch", i)); s.Code != 4 {
			t.Fatalf("round %d: status %+v, want exit code 4", i, s)
		}
		if reapCalled || !released {
			t.Fatalf("round %d: reap called %v, release called %v; want only release", i, reapCalled, released)
		}
	}
	if after := openFDs(t); after > before {
		t.Fatalf("fds %d -> %d after 5 processes reaped before their watch", before, after)
	}
}

// forkFromDyingThread starts cmd from a thread that exits right after, so
// the child becomes the main thread's (an orphan the loop may reap), and
// waits until that thread is gone. forked, when not nil, gets the child's
// pid on the forking thread, before the child can be the main thread's.
func forkFromDyingThread(t *testing.T, cmd *exec.Cmd, forked func(pid int)) {
	t.Helper()
	type result struct {
		tid int
		err error
	}
	ch := make(chan result)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		err := cmd.Start()
		if err == nil && forked != nil {
			forked(cmd.Process.Pid)
		}
		ch <- result{unix.Gettid(), err}
	}()
	f := <-ch
	if f.err != nil {
		t.Fatal(f.err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", f.tid)); errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("forking thread %d did not exit", f.tid)
		}
		time.Sleep(time.Millisecond)
	}
}

// holdZombie makes an exited child of the main thread that the orphan loop
// must leave alone (Hold) and returns its pid and status channel. Hold is
// in place before the fork, so the loop can never reap it first. Only this
// one is a zombie yet: it is first in the main thread's children, so
// wait(P_ALL) returns it before any later orphan.
func holdZombie(t *testing.T) (int, <-chan ExitStatus) {
	t.Helper()
	var heldPid atomic.Int64
	heldPid.Store(-1)
	Hold(func(pid int) bool { return pid == int(heldPid.Load()) })
	t.Cleanup(func() { Hold(nil); Kick() })
	held := exec.Command("/bin/sh", "-c", "exit 1")
	forkFromDyingThread(t, held, func(pid int) { heldPid.Store(int64(pid)) })
	pid := held.Process.Pid
	st := Register(pid)
	t.Cleanup(func() { Unregister(pid) })
	waitZombie(t, pid, "the held child")
	return pid, st
}

// waitZombie waits (5 s at most) until pid, a child of this process, has
// exited, leaving it unreaped.
func waitZombie(t *testing.T, pid int, what string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		var info unix.Siginfo
		if unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT|unix.WALL, nil) == nil {
			if _, ok := fromSiginfo(&info); ok {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s (%d) did not exit", what, pid)
		}
	}
}

// TestHeldZombieBlocksNoOtherOrphan: a zombie the orphan loop must leave
// alone (held for a start in flight, which may be stuck for good) and that
// wait(P_ALL) returns first does not keep the orphans behind it from being
// reaped: they are reaped by pid. Once released, the held one is reaped
// too. (Before, every orphan of the guest waited behind it.) The same
// without CONFIG_PROC_CHILDREN: noProcChildren makes threadChildrenOrAll
// take the branch a missing /proc/<pid>/task/<tid>/children takes (its
// read fails, whatever the error), which lists every child of the process
// from /proc/*/stat, children of other threads too; those must be refused
// (waitid __WNOTHREAD): a zombie child of another, live thread, listed
// there, is still its own thread's to wait once the orphans were reaped
// around the held one.
func TestHeldZombieBlocksNoOtherOrphan(t *testing.T) {
	t.Run("proc-children", func(t *testing.T) { heldZombieBlocksNoOtherOrphan(t, false) })
	t.Run("no-proc-children", func(t *testing.T) {
		noProcChildren.Store(true)
		t.Cleanup(func() { noProcChildren.Store(false) })
		heldZombieBlocksNoOtherOrphan(t, true)
	})
}

// otherThreadZombie forks, from a thread that stays alive, a child that
// exits 5 at once, and returns its pid once it is a zombie: a child of
// this process that is not the main thread's, so not an orphan, which the
// orphan loop must leave to its thread. wait reaps it on that thread.
func otherThreadZombie(t *testing.T) (pid int, wait func() (unix.WaitStatus, error)) {
	t.Helper()
	type result struct {
		ws  unix.WaitStatus
		err error
	}
	pids, reap, res := make(chan int, 1), make(chan struct{}), make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		cmd := exec.Command("/bin/sh", "-c", "exit 5")
		if err := cmd.Start(); err != nil {
			pids <- -1
			res <- result{err: err}
			return
		}
		pids <- cmd.Process.Pid
		<-reap
		var ws unix.WaitStatus
		_, err := unix.Wait4(cmd.Process.Pid, &ws, unix.WALL|unix.WNOTHREAD, nil)
		cmd.Process.Release()
		res <- result{ws, err}
	}()
	var once sync.Once
	var got result
	wait = func() (unix.WaitStatus, error) {
		once.Do(func() { close(reap); got = <-res })
		return got.ws, got.err
	}
	if pid = <-pids; pid < 0 {
		t.Fatal((<-res).err)
	}
	t.Cleanup(func() { wait() })
	waitZombie(t, pid, "the other thread's child")
	return pid, wait
}

func heldZombieBlocksNoOtherOrphan(t *testing.T, fallback bool) {
	_, heldSt := holdZombie(t)
	other, waitOther := otherThreadZombie(t)
	if fallback && !slices.Contains(threadChildrenOrAll(), other) {
		t.Fatalf("the /proc/*/stat fallback does not list child %d of another thread (it lists %v)", other, threadChildrenOrAll())
	}
	arounds := r.arounds.Load()
	for i := range 3 {
		cmd := exec.Command("/bin/sh", "-c", fmt.Sprintf("exit %d", 10+i))
		forkFromDyingThread(t, cmd, nil)
		pid := cmd.Process.Pid
		t.Cleanup(func() { Unregister(pid) })
		if st := statusWithin(t, Register(pid), fmt.Sprintf("orphan %d behind a held zombie", i)); st.Code != 10+i {
			t.Fatalf("orphan %d: %+v", i, st)
		}
	}
	select {
	case st := <-heldSt:
		t.Fatalf("the held zombie was reaped: %+v", st)
	default:
	}
	if r.arounds.Load() == arounds {
		t.Fatal("the orphans were reaped without a pass over the main thread's children (the test proves nothing)")
	}
	if ws, err := waitOther(); err != nil || ws.ExitStatus() != 5 {
		t.Fatalf("the other thread's child, after the orphans were reaped around the held zombie: wait %v, %v; want its exit 5 (the orphan loop reaped it?)", ws, err)
	}
	Hold(nil)
	Kick()
	if st := statusWithin(t, heldSt, "the released zombie"); st.Code != 1 {
		t.Fatalf("held zombie: %+v", st)
	}
}

// TestReapAroundRateLimited: with a zombie left alone in front of
// wait(P_ALL), a burst of orphans (each exit a SIGCHLD) costs at most one
// pass over the main thread's children per aroundEvery, not one per exit,
// and the last orphans of the burst are still reaped without another
// SIGCHLD.
func TestReapAroundRateLimited(t *testing.T) {
	const n = 300
	holdZombie(t)
	reaped, arounds := Reaped(), r.arounds.Load()
	start := time.Now()
	// Each "( true & )" leaves an orphan that exits at once: re-parented
	// to the main thread (this process is a subreaper).
	burst := exec.Command("/bin/sh", "-c", fmt.Sprintf("for i in $(seq %d); do ( true & ); done", n))
	if out, err := burst.CombinedOutput(); err != nil {
		t.Fatalf("burst: %v: %s", err, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for Reaped()-reaped < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d orphans reaped behind a held zombie after 20 s", Reaped()-reaped, n)
		}
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	passes := r.arounds.Load() - arounds
	bound := uint64(elapsed/aroundEvery) + 2
	t.Logf("%d orphans reaped in %v with %d passes over the children (bound %d)", n, elapsed, passes, bound)
	if passes > bound {
		t.Fatalf("%d passes over the main thread's children in %v for %d orphans, want at most %d (one per %v)", passes, elapsed, n, bound, aroundEvery)
	}
}

// TestStatPPid: the parent pid is found after a command name holding
// spaces and parentheses.
func TestStatPPid(t *testing.T) {
	for stat, want := range map[string]int{
		"42 (sh) S 7 42 42 0 -1":           7,
		"42 (a) b (c) 1 ) R 1234 1 1 0 -1": 1234,
		"42 (runc:[0:PARENT]) Z 1 0":       1,
		"42 (sh":                           -1,
		"42 (sh) S":                        -1,
	} {
		if got := statPPid([]byte(stat)); got != want {
			t.Errorf("statPPid(%q) = %d, want %d", stat, got, want)
		}
	}
}
