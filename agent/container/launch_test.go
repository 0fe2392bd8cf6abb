package container

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/container/containertest"
	"github.com/keelvm/keel/init/reaper"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

const launchCgroup = "keel-launch-test"

func newLaunchSandbox(t *testing.T, timeout time.Duration) *Sandbox {
	t.Helper()
	f := false
	s, err := New(Config{StateRoot: t.TempDir(), CgroupParent: "/" + launchCgroup, NoPivotRoot: &f, LaunchTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Destroy(context.Background()); err != nil {
			t.Errorf("destroy: %v", err)
		}
	})
	return s
}

// hookSpec returns a spec whose hook of the given kind writes its pid to
// pidFile, then sleeps forever.
func hookSpec(kind, pidFile string, args ...string) *specs.Spec {
	spec := testSpec(args...)
	h := specs.Hook{Path: "/bin/sh", Args: []string{"sh", "-c", "echo $$ > " + pidFile + "; exec sleep 1000"}}
	spec.Hooks = &specs.Hooks{}
	switch kind {
	case "createRuntime":
		spec.Hooks.CreateRuntime = []specs.Hook{h}
	case "poststart":
		spec.Hooks.Poststart = []specs.Hook{h}
	}
	return spec
}

// waitPidFile waits until a hook wrote its pid and returns it.
func waitPidFile(t *testing.T, path string, failed <-chan error) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				return pid
			}
		}
		select {
		case err := <-failed:
			t.Fatalf("start returned before its hook ran: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Fatalf("hook never wrote %s", path)
	return 0
}

// within runs f and fails the test if it takes longer than d (f keeps
// running: a hang on the old code must fail, not wedge, the test).
func within(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(d):
		t.Fatalf("%s: blocked for %v (behind a stalled start?)", what, d)
	}
}

// otherContainerWorks runs a whole create/start/exec/wait/remove cycle of
// another container and reaps an orphan, each bounded.
func otherContainerWorks(t *testing.T, s *Sandbox) {
	t.Helper()
	const bound = 20 * time.Second
	id := uniqueID("other")
	var c *Container
	within(t, bound, "create of another container", func() (err error) {
		c, err = s.CreateContainer(ContainerConfig{ID: id, Spec: testSpec("sleep", "100")})
		return err
	})
	within(t, bound, "start of another container", c.Start)
	within(t, bound, "exec + wait in another container", func() error {
		io := newIO(t, false)
		p, err := c.Exec("e1", specProcess("/bin/echo", "hi"), io)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), bound)
		defer cancel()
		st, err := p.Wait(ctx)
		if err == nil && st.Code != 0 {
			err = fmt.Errorf("exec exited %v", st)
		}
		return err
	})
	within(t, bound, "remove of another container", func() error { return s.RemoveContainer(context.Background(), id, 0) })
	before := reaper.Reaped()
	within(t, bound, "reaping an orphan", func() error {
		st, err := reaper.Command(exec.Command("/bin/sh", "-c", "sleep 0.05 & exit 0"))
		if err != nil || st.Code != 0 {
			return fmt.Errorf("%v %v", st, err)
		}
		for reaper.Reaped() == before {
			time.Sleep(10 * time.Millisecond)
		}
		return nil
	})
}

func specProcess(args ...string) *specs.Process {
	p := *testSpec(args...).Process
	return &p
}

// gone waits until pid no longer exists (killed and reaped).
func gone(t *testing.T, pid int, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if unix.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	t.Fatalf("%s (pid %d) still exists: %s", what, pid, b)
}

// leftNothing checks the container's state dir and cgroups are gone.
func leftNothing(t *testing.T, s *Sandbox, id string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var left []string
		if _, err := os.Stat(filepath.Join(s.root, id)); err == nil {
			left = append(left, "state dir")
		}
		for _, d := range containertest.Take(launchCgroup).Cgroups {
			if filepath.Base(d) == id {
				left = append(left, d)
			}
		}
		if _, err := s.Container(id); err == nil {
			left = append(left, "sandbox entry")
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %q left behind: %v", id, left)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestStalledCreateBlocksNothing: a createRuntime hook that never returns
// stalls one CreateContainer; every other container's lifecycle and the
// reaping of orphans go on, and the stalled create fails with ErrTimeout at
// the launch timeout leaving nothing (hook killed, no state, no cgroup).
func TestStalledCreateBlocksNothing(t *testing.T) {
	// Below DefaultHookTimeout: the launch deadline, not the hook's own
	// timeout, ends this start.
	const timeout = 6 * time.Second
	s := newLaunchSandbox(t, timeout)
	pidFile := filepath.Join(t.TempDir(), "hook.pid")
	id := uniqueID("stalled")
	failed := make(chan error, 1)
	t0 := time.Now()
	go func() {
		_, err := s.CreateContainer(ContainerConfig{ID: id, Spec: hookSpec("createRuntime", pidFile, "true")})
		failed <- err
	}()
	hookPid := waitPidFile(t, pidFile, failed)
	otherContainerWorks(t, s)
	var err error
	select {
	case err = <-failed:
		if time.Since(t0) < timeout {
			t.Fatalf("stalled create returned after %v, before the %v timeout: %v", time.Since(t0), timeout, err)
		}
	case <-time.After(timeout + launchGrace + 20*time.Second):
		t.Fatal("stalled create never returned")
	}
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("stalled create: want ErrTimeout, got %v", err)
	}
	t.Logf("stalled create failed after %v: %v", time.Since(t0).Round(time.Millisecond), err)
	gone(t, hookPid, "the stalled hook")
	leftNothing(t, s, id)
}

// TestStalledExecBlocksNothing: a workload stopping every process in its
// pid namespace (kill -STOP -1) stalls an ExecProcess into it (libcontainer
// waits the stopped bootstrap process forever); other containers go on, the
// exec fails with ErrTimeout and its stopped processes are killed, and the
// container itself keeps running.
func TestStalledExecBlocksNothing(t *testing.T) {
	const timeout = 5 * time.Second
	s := newLaunchSandbox(t, timeout)
	id := uniqueID("stopper")
	c, err := s.CreateContainer(ContainerConfig{ID: id, Spec: testSpec("sh", "-c", "while :; do kill -STOP -1; done")})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	// The stopper catches an exec's bootstrap process in its pid namespace
	// most of the time; an exec it missed succeeds at once (its echo is
	// then stopped): try again.
	var failed chan error
	var t0 time.Time
	execID := ""
	for i := range 20 {
		execID = fmt.Sprintf("stalled-%d", i)
		failed = make(chan error, 1)
		t0 = time.Now()
		io := newIO(t, false)
		go func() {
			_, err := c.Exec(execID, specProcess("/bin/echo", "never"), io)
			failed <- err
		}()
		select {
		case err := <-failed:
			if err != nil {
				t.Fatalf("exec failed before the launch timeout: %v", err)
			}
			continue
		case <-time.After(timeout / 2):
		}
		break
	}
	otherContainerWorks(t, s)
	select {
	case err = <-failed:
	case <-time.After(timeout + launchGrace + 20*time.Second):
		t.Fatal("stalled exec never returned")
	}
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("stalled exec: want ErrTimeout after %v, got %v after %v", timeout, err, time.Since(t0))
	}
	t.Logf("stalled exec failed after %v: %v", time.Since(t0).Round(time.Millisecond), err)
	if _, err := c.Process(execID); err == nil {
		t.Error("the failed exec is still listed")
	}
	// Only the container's init and the execs that got through (stopped
	// echos) are left in its cgroup: the stalled exec's stages are gone.
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids, err := c.Pids()
		if err != nil {
			t.Fatal(err)
		}
		left := 0
		for _, pid := range pids {
			if _, _, comm := statOf(pid); comm != "echo" && pid != c.init.Pid {
				left++
			}
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes left in the container: %v (init %d)", pids, c.init.Pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if c.init.State() != ProcessRunning {
		t.Error("the container's init died with the exec")
	}
	if err := s.RemoveContainer(context.Background(), id, 0); err != nil {
		t.Fatal(err)
	}
}

// TestStalledStartTimesOut: an init stopped before StartContainer (as a
// workload sharing its pid namespace can do with kill -STOP -1) never
// writes the exec fifo, so libcontainer's Exec blocks; StartContainer fails
// with ErrTimeout, the container's processes are killed and it is stopped
// (the host removes it), and nothing else was blocked meanwhile.
func TestStalledStartTimesOut(t *testing.T) {
	const timeout = 3 * time.Second
	s := newLaunchSandbox(t, timeout)
	id := uniqueID("stopped-init")
	c, err := s.CreateContainer(ContainerConfig{ID: id, Spec: testSpec("sleep", "100")})
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(c.init.Pid, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	failed := make(chan error, 1)
	t0 := time.Now()
	go func() { failed <- c.Start() }()
	otherContainerWorks(t, s)
	select {
	case err = <-failed:
	case <-time.After(timeout + launchGrace + 20*time.Second):
		t.Fatal("stalled start never returned")
	}
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("stalled start: want ErrTimeout, got %v after %v", err, time.Since(t0))
	}
	t.Logf("stalled start failed after %v: %v", time.Since(t0).Round(time.Millisecond), err)
	select {
	case <-c.init.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the container's init survived the failed start")
	}
	if st := c.State(); st != StateStopped {
		t.Errorf("state %v, want stopped", st)
	}
	if err := s.RemoveContainer(context.Background(), id, 0); err != nil {
		t.Fatal(err)
	}
	leftNothing(t, s, id)
}

// TestStalledPoststartHook: libcontainer runs poststart hooks when it
// creates the init; one that never returns is killed at the launch
// deadline with everything it forked, and the create is rolled back.
func TestStalledPoststartHook(t *testing.T) {
	const timeout = 3 * time.Second
	s := newLaunchSandbox(t, timeout)
	pidFile := filepath.Join(t.TempDir(), "hook.pid")
	id := uniqueID("poststart")
	failed := make(chan error, 1)
	go func() {
		_, err := s.CreateContainer(ContainerConfig{ID: id, Spec: hookSpec("poststart", pidFile, "sleep", "100")})
		failed <- err
	}()
	hookPid := waitPidFile(t, pidFile, failed)
	var err error
	select {
	case err = <-failed:
	case <-time.After(timeout + launchGrace + 20*time.Second):
		t.Fatal("stalled create never returned")
	}
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("want ErrTimeout, got %v", err)
	}
	gone(t, hookPid, "the stalled poststart hook")
	leftNothing(t, s, id)
}

// TestHookTimeout: a hook's own spec timeout (or DefaultHookTimeout) kills
// it with everything it forked, well before the launch timeout.
func TestHookTimeout(t *testing.T) {
	s := newLaunchSandbox(t, time.Minute)
	dir := t.TempDir()
	bgPid := filepath.Join(dir, "bg.pid")
	spec := testSpec("true")
	one := 1
	spec.Hooks = &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/bin/sh", Timeout: &one,
		Args: []string{"sh", "-c", "sleep 1000 & echo $! > " + bgPid + "; wait"}}}}
	id := uniqueID("hooktimeout")
	t0 := time.Now()
	_, err := s.CreateContainer(ContainerConfig{ID: id, Spec: spec})
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "did not finish within 1s") {
		t.Fatalf("want the hook's timeout error, got %v", err)
	}
	if d := time.Since(t0); d > 20*time.Second {
		t.Errorf("create with a 1 s hook timeout took %v", d)
	}
	b, err := os.ReadFile(bgPid)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	gone(t, pid, "the hook's background child")
	leftNothing(t, s, id)
}

// TestTimedOutExecSparesSiblingExec: an exec timing out while a sibling
// exec's process has just been started by libcontainer and is not yet
// watched by the reaper (the window is held open here) kills nothing of the
// sibling's: starts of one container take turns, so a start's killStart
// only ever meets its own processes. The sibling's program runs to its own
// exit code.
func TestTimedOutExecSparesSiblingExec(t *testing.T) {
	s := newLaunchSandbox(t, 30*time.Second)
	id := uniqueID("siblings")
	c, err := s.CreateContainer(ContainerConfig{ID: id, Spec: testSpec("sleep", "100")})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.RemoveContainer(context.Background(), id, 0) })
	release, atSibling := make(chan struct{}), make(chan struct{})
	startHook = func(execID, stage string) {
		switch {
		case execID == "sibling" && stage == "started":
			close(atSibling)
			<-release
		case execID == "stalled" && stage == "before":
			<-release
		}
	}
	t.Cleanup(func() { startHook = nil })
	type result struct {
		p   *Process
		err error
	}
	sibling := make(chan result, 1)
	go func() {
		p, err := c.Exec("sibling", specProcess("/bin/sh", "-c", "sleep 3; exit 7"), newIO(t, false))
		sibling <- result{p, err}
	}()
	select {
	case <-atSibling:
	case r := <-sibling:
		t.Fatalf("sibling exec returned before its start hook: %v", r.err)
	case <-time.After(20 * time.Second):
		t.Fatal("sibling exec never started")
	}
	// The sibling read its own bound already; this one is short.
	c.launch.timeout = time.Second
	t0 := time.Now()
	_, err = c.Exec("stalled", specProcess("/bin/true"), newIO(t, false))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("stalled exec: %v after %v, want ErrTimeout", err, time.Since(t0))
	}
	// Its deadline (and any kill loop) passed while the sibling was
	// unwatched; let a kill loop run a few more rounds before releasing.
	time.Sleep(4 * launchKillEvery)
	close(release)
	var r result
	select {
	case r = <-sibling:
	case <-time.After(20 * time.Second):
		t.Fatal("sibling exec never returned")
	}
	if r.err != nil {
		t.Fatalf("sibling exec: %v", r.err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := r.p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Code != 7 || st.Signal != 0 {
		t.Fatalf("sibling exec ended %+v, want exit code 7 (killed by the timed-out exec's kill loop?)", st)
	}
}

// stuckExecSetup starts a container running sleep and returns it with a
// short launch timeout for the exec the caller is about to hold.
func stuckExecSetup(t *testing.T, prefix string) *Container {
	t.Helper()
	return startedSleeper(t, newLaunchSandbox(t, time.Second), prefix)
}

// startedSleeper creates and starts a container running sleep in s, removed
// when the test ends.
func startedSleeper(t *testing.T, s *Sandbox, prefix string) *Container {
	t.Helper()
	id := uniqueID(prefix)
	c, err := s.CreateContainer(ContainerConfig{ID: id, Spec: testSpec("sleep", "100")})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.RemoveContainer(context.Background(), id, 0) })
	return c
}

// refusedAtOnce runs an exec while the container's earlier start is stuck:
// it must fail with ErrUnavailable well within its own launch timeout
// (c.launch.timeout, set long by the caller), naming the container and the
// stuck start.
func refusedAtOnce(t *testing.T, c *Container, execID, stuckID string) {
	t.Helper()
	t0 := time.Now()
	_, err := c.Exec(execID, specProcess("/bin/true"), newIO(t, false))
	d := time.Since(t0)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("exec %s during a stuck start: %v after %v, want ErrUnavailable at once", execID, err, d)
	}
	if d > c.launch.timeout/4 {
		t.Errorf("exec %s refused after %v: it waited for the stuck start (launch timeout %v)", execID, d, c.launch.timeout)
	}
	if strings.HasPrefix(err.Error(), "unable to") {
		t.Errorf("error %q: wrapped as a failed start, though nothing was started", err)
	}
	t.Logf("refused: %v", err)
	for _, want := range []string{strconv.Quote(c.id), strconv.Quote(stuckID), "stuck since"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

// execRunsAgain waits (at most 20 s) until an exec of the container
// succeeds again once the stuck start ended, and sees its exit code.
func execRunsAgain(t *testing.T, c *Container) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; ; i++ {
		p, err := c.Exec(fmt.Sprintf("again%d", i), specProcess("/bin/sh", "-c", "exit 3"), newIO(t, false))
		if err == nil {
			if st := waitStatus(t, p); st.Code != 3 {
				t.Fatalf("exec after the stuck start ended: %+v, want exit code 3", st)
			}
			return
		}
		if !errors.Is(err, ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("exec after the stuck start ended: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestStuckStartRefusesLaterStarts: an exec whose start never returns (held
// here in the start hook, as a start whose process sleeps uninterruptibly
// holds libcontainer) times out and keeps the container's turn past its
// grace. An exec already waiting for the turn then, and every later one,
// is refused at once with ErrUnavailable naming the stuck start, instead of
// waiting its full launch timeout; once the stuck start ends, execs run
// again. (Before, each waited its whole timeout and failed with
// DeadlineExceeded.)
func TestStuckStartRefusesLaterStarts(t *testing.T) {
	c := stuckExecSetup(t, "stuckturn")
	release, held := make(chan struct{}), make(chan struct{})
	startHook = func(execID, stage string) {
		if execID == "stuck" && stage == "before" {
			close(held)
			<-release
		}
	}
	t.Cleanup(func() { startHook = nil })
	var once bool
	unhold := func() {
		if !once {
			once = true
			close(release)
		}
	}
	t.Cleanup(unhold)
	stuck := make(chan error, 1)
	go func() {
		_, err := c.Exec("stuck", specProcess("/bin/true"), newIO(t, false))
		stuck <- err
	}()
	select {
	case <-held:
	case err := <-stuck:
		t.Fatalf("stuck exec returned before its start: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the exec never reached its start")
	}
	// Starts from now on would wait long for the turn.
	c.launch.timeout = 40 * time.Second
	waiter := make(chan error, 1)
	go func() {
		_, err := c.Exec("waiter", specProcess("/bin/true"), newIO(t, false))
		waiter <- err
	}()
	select {
	case err := <-stuck:
		if !errors.Is(err, ErrTimeout) {
			t.Fatalf("stuck exec: %v, want ErrTimeout", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the stuck exec did not answer after its timeout and grace")
	}
	select {
	case err := <-waiter:
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), `"stuck"`) {
			t.Fatalf("exec waiting for the turn: %v, want ErrUnavailable naming the stuck start", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("an exec waiting for the turn was not refused once the holder was stuck")
	}
	refusedAtOnce(t, c, "later", "stuck")
	unhold()
	execRunsAgain(t, c)
}

// TestFrozenExecRefusesLaterExecs: the same with a real stuck start. The
// container's cgroup is frozen (cgroup v1 freezer: a frozen task's SIGKILL
// waits for the thaw), so an exec's bootstrap stages stop as they join it
// and libcontainer's start cannot return even when they are killed. A later
// exec is refused at once; after the thaw, execs run again.
func TestFrozenExecRefusesLaterExecs(t *testing.T) {
	c := stuckExecSetup(t, "frozenexec")
	st, err := c.lc.State()
	if err != nil {
		t.Fatal(err)
	}
	fz := st.CgroupPaths["freezer"]
	if fz == "" || !strings.HasPrefix(fz, "/sys/fs/cgroup/freezer/") {
		// cgroup v2's freezer lets SIGKILL through: no way to hold a
		// start past its kill without the v1 one.
		t.Skipf("needs the cgroup v1 freezer (container cgroups %v)", st.CgroupPaths)
	}
	state := filepath.Join(fz, "freezer.state")
	set := func(v string) {
		if err := os.WriteFile(state, []byte(v), 0o644); err != nil {
			t.Fatalf("%s: %v", v, err)
		}
	}
	set("FROZEN")
	t.Cleanup(func() { _ = os.WriteFile(state, []byte("THAWED"), 0o644) })
	t0 := time.Now()
	_, err = c.Exec("frozen", specProcess("/bin/true"), newIO(t, false))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("exec into a frozen container: %v after %v, want ErrTimeout", err, time.Since(t0))
	}
	c.launch.timeout = 40 * time.Second
	refusedAtOnce(t, c, "later", "frozen")
	set("THAWED")
	execRunsAgain(t, c)
}

// TestFailedStartReapsItsStagesWhileAnotherIsStuck: a start that fails
// reaps the bootstrap stages it abandoned when it returns, although another
// start (another container's exec, held in the start hook after
// libcontainer's Start: in flight) has not ended. The abandoned stage is
// stood in for by a process named runc:[1:CHILD] that the failing exec's
// start hook forks on the start's thread and never waits, as libcontainer
// leaves a stage whose pid it never learnt (stage 0 killed before it sent
// it). Before, such zombies were reaped only once no start was in flight:
// never, while a start stays stuck.
func TestFailedStartReapsItsStagesWhileAnotherIsStuck(t *testing.T) {
	s := newLaunchSandbox(t, 30*time.Second)
	var cs []*Container
	for _, prefix := range []string{"held", "failing"} {
		cs = append(cs, startedSleeper(t, s, prefix))
	}
	stage := filepath.Join(t.TempDir(), "runc:[1:CHILD]") // its comm
	if err := os.Symlink("/bin/true", stage); err != nil {
		t.Fatal(err)
	}
	release, held := make(chan struct{}), make(chan struct{})
	stagePid := make(chan int, 1)
	startHook = func(execID, at string) {
		switch {
		case execID == "held" && at == "started":
			close(held)
			<-release
		case execID == "failing" && at == "started":
			// Forked from this goroutine's thread; no pidfd kept.
			pid, err := syscall.ForkExec(stage, []string{stage}, &syscall.ProcAttr{})
			if err != nil {
				t.Errorf("fork the stand-in stage: %v", err)
			}
			// Dead by the time Start returns, like a stage killed
			// before its start gave up.
			for i := 0; i < 500 && err == nil; i++ {
				if _, state, _ := statOf(pid); state == "Z" {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			stagePid <- pid
		}
	}
	var once bool
	unhold := func() {
		if !once {
			once = true
			close(release)
		}
	}
	t.Cleanup(func() { unhold(); startHook = nil })
	heldDone := make(chan error, 1)
	go func() {
		_, err := cs[0].Exec("held", specProcess("/bin/true"), newIO(t, false))
		heldDone <- err
	}()
	select {
	case <-held:
	case err := <-heldDone:
		t.Fatalf("the held exec returned: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the held exec never reached the start hook")
	}
	if _, err := cs[1].Exec("failing", specProcess("/nonexistent/program"), newIO(t, false)); err == nil {
		t.Fatal("an exec of a missing program started")
	}
	var pid int
	select {
	case pid = <-stagePid:
	case <-time.After(10 * time.Second):
		t.Fatal("the failing exec returned without reaching its start hook")
	}
	if pid <= 0 {
		t.Fatal("no stand-in stage")
	}
	// It has exited by now (true), and must be reaped while the held
	// start is still in flight.
	deadline := time.Now().Add(5 * time.Second)
	for {
		ppid, state, comm := statOf(pid)
		if state == "" {
			break // reaped
		}
		if ppid != os.Getpid() || comm != "runc:[1:CHILD]" {
			t.Fatalf("pid %d is %q (parent %d, state %s): not the stand-in stage", pid, comm, ppid, state)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the failed start's abandoned stage (pid %d, state %s) is not reaped while another start is in flight", pid, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := starts.n.Load(); n == 0 {
		t.Fatal("no start in flight: the held exec ended before the check")
	}
	unhold()
	select {
	case err := <-heldDone:
		if err != nil {
			t.Fatalf("the held exec: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the held exec did not return within 30s of its release")
	}
}
