package container

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/keelvm/keel/init/reaper"
	"github.com/opencontainers/runc/libcontainer/configs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

const (
	// DefaultLaunchTimeout bounds CreateContainer, StartContainer and
	// ExecProcess when Config.LaunchTimeout is 0 (the default of
	// agent.launch_process_timeout, init/cmdline's DefaultLaunchProcTimeout).
	// It is what the Kata runtime waits for a CreateContainer, so the guest
	// never fails a start the host still waits for, and it leaves room for
	// hooks to reach their own DefaultHookTimeout. A stalled start holds no
	// lock, so a long bound costs only the stalled start's own processes.
	DefaultLaunchTimeout = 60 * time.Second
	// DefaultHookTimeout is the timeout of an OCI hook whose spec gives
	// none (Kata's DEFAULT_HOOK_TIMEOUT_SEC).
	DefaultHookTimeout = 10 * time.Second
	// launchGrace is how long a start past its deadline may take to give
	// up once its processes are killed, before the RPC answers anyway and
	// the rollback finishes in the background.
	launchGrace = 2 * time.Second
	// launchKillEvery is how often a start past its deadline has its
	// processes killed again (a bootstrap stage forked meanwhile).
	launchKillEvery = 50 * time.Millisecond
	// hookOutputMax bounds the hook output kept for the error message.
	hookOutputMax = 4 << 10
	// hookWaitDelay bounds how long a finished hook's stdout may be held
	// open by a background child it left.
	hookWaitDelay = time.Second
)

// hookCtl carries the deadline of the start in progress to the hooks the
// agent runs itself (createRuntime, prestart, poststart, poststop), so they
// are killed when the start is abandoned.
type hookCtl struct {
	mu  sync.Mutex
	ctx context.Context
}

func (h *hookCtl) set(ctx context.Context) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ctx = ctx
}

func (h *hookCtl) clear() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ctx = nil
}

func (h *hookCtl) context() context.Context {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ctx == nil {
		return context.Background()
	}
	return h.ctx
}

// agentHooks run in the agent (libcontainer's parent side); the others run
// inside the container's init and stay libcontainer CommandHooks (they are
// serialized to it), with a default timeout.
var agentHooks = map[configs.HookName]bool{
	configs.Prestart: true, configs.CreateRuntime: true, configs.Poststart: true, configs.Poststop: true,
}

// boundHooks gives every hook a timeout (the spec's or DefaultHookTimeout)
// and replaces the hooks the agent runs by agentHook, which is also killed
// with its whole process group when ctl's context ends and never waits for
// a background child holding its output.
func boundHooks(cfg *configs.Config, ctl *hookCtl) {
	for name, list := range cfg.Hooks {
		for i, h := range list {
			ch, ok := h.(configs.CommandHook)
			if !ok {
				continue
			}
			c := *ch.Command
			if c.Timeout == nil || *c.Timeout <= 0 {
				d := DefaultHookTimeout
				c.Timeout = &d
			}
			if agentHooks[name] {
				list[i] = &agentHook{cmd: c, ctl: ctl}
			} else {
				list[i] = configs.NewCommandHook(&c)
			}
		}
	}
}

type agentHook struct {
	cmd configs.Command
	ctl *hookCtl
}

// boundedBuffer keeps the first hookOutputMax bytes written to it.
type boundedBuffer struct{ bytes.Buffer }

func (b *boundedBuffer) Write(p []byte) (int, error) {
	if room := hookOutputMax - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func (h *agentHook) Run(s *specs.State) error {
	state, err := json.Marshal(s)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(h.ctl.context(), *h.cmd.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.cmd.Path)
	cmd.Args, cmd.Env, cmd.Dir = h.cmd.Args, h.cmd.Env, h.cmd.Dir
	if len(cmd.Args) == 0 {
		cmd.Args = []string{h.cmd.Path}
	}
	var out boundedBuffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(state), &out, &out
	// Its own process group, so a timeout kills what the hook forked too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return unix.Kill(-cmd.Process.Pid, unix.SIGKILL) }
	cmd.WaitDelay = hookWaitDelay
	err = cmd.Run()
	if ctx.Err() != nil {
		return fmt.Errorf("hook %s did not finish within %v (output %q): %w", h.cmd.Path, *h.cmd.Timeout, out.String(), ErrTimeout)
	}
	if errors.Is(err, exec.ErrWaitDelay) {
		// Exited successfully; a background child kept its output open.
		return nil
	}
	if err != nil {
		return fmt.Errorf("hook %s: %w (output %q)", h.cmd.Path, err, out.String())
	}
	return nil
}

// errLaunchTimeout marks an error of launch's own deadline (the start was
// abandoned and undo runs), as opposed to a start that failed by itself.
var errLaunchTimeout = errors.New("agent.launch_process_timeout")

// noTurn is the error of a start that never got its container's turn (it
// did nothing); like errLaunchTimeout's, its text is complete as it is.
type noTurn struct{ error }

func (e noTurn) Unwrap() error { return e.error }

// launchError reports whether err is launch's own (complete) error rather
// than the start's.
func launchError(err error) bool {
	var nt noTurn
	return errors.Is(err, errLaunchTimeout) || errors.As(err, &nt)
}

// killAndWait SIGKILLs the process and waits (at most launchGrace) until it
// is reaped.
func (p *Process) killAndWait() {
	_ = p.signal(unix.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(launchGrace):
	}
}

// launchOpts bound one start (libcontainer Start, Exec or Run).
type launchOpts struct {
	timeout time.Duration
	// procs is the container's cgroup.procs file: the start's own
	// processes are the agent's unwatched children listed there.
	procs string
	// mntnsPid is a process in the container's mount namespace (its
	// init; 0 before it exists): exec stages that entered the container
	// are found by that namespace, whose inode (mntns) is read only once
	// a start timed out, off the exec path.
	mntnsPid int
	mntns    uint64
	hooks    *hookCtl
	// kill, when set, is called at the deadline too (StartContainer
	// kills the watched init, which killStart leaves alone).
	kill func()
	// turn (one per container) is held by a start from before
	// libcontainer runs until the reaper watches what it started and,
	// after a timeout, until its kill loop and undo have ended.
	// killStart picks its targets as the container's unwatched children:
	// without the turn, a sibling exec's process that libcontainer had
	// just started and the reaper not yet watched was one of them.
	turn *startTurn
}

// startTurn lets the starts of one container take turns (launchOpts.turn).
// A start that outlives its deadline and its grace (libcontainer's start
// does not return even though its processes are SIGKILLed: one is in
// uninterruptible sleep, in a frozen cgroup or on a hung FUSE/NFS read)
// keeps the turn until it finally ends, perhaps never; the starts that then
// want the turn are refused at once with ErrUnavailable, naming the stuck
// start and since when, instead of each waiting its whole launch timeout
// for nothing. They are refused rather than let through: the stuck start's
// kill loop still SIGKILLs the container's unwatched children, which a
// start let through would have among its own processes. Waiting costs no
// goroutine and no memory per waiter: each blocks in its own select on ch
// and on stuck.
type startTurn struct {
	ch chan struct{} // capacity 1: full while a start holds the turn
	mu sync.Mutex
	// stuck is closed when the holder is declared stuck; a new channel
	// comes with every release.
	stuck chan struct{}
	// what the holder is, when it began and when it was declared stuck.
	what         string
	began, since time.Time
}

func newStartTurn() *startTurn {
	return &startTurn{ch: make(chan struct{}, 1), stuck: make(chan struct{})}
}

// take waits for the turn until expired fires. It fails with ErrTimeout
// then, and with ErrUnavailable at once when the holder is (or becomes)
// stuck.
func (t *startTurn) take(what string, timeout time.Duration, expired <-chan time.Time) error {
	for {
		t.mu.Lock()
		stuck := t.stuck
		t.mu.Unlock()
		select {
		case t.ch <- struct{}{}:
			t.mu.Lock()
			t.what, t.began, t.since = what, time.Now(), time.Time{}
			t.mu.Unlock()
			return nil
		case <-expired:
			return noTurn{fmt.Errorf("%s: not started within %v (another start in the container did not end): %w", what, timeout, ErrTimeout)}
		case <-stuck:
		}
		t.mu.Lock()
		if t.stuck != stuck {
			// Released since (and maybe taken by a start that is
			// not stuck): look again.
			t.mu.Unlock()
			continue
		}
		holder, began, since := t.what, t.began, t.since
		t.mu.Unlock()
		return noTurn{fmt.Errorf("%s: refused: %s has been stuck since %s (began %s, %v ago; its processes were killed and did not die: uninterruptible sleep, a frozen cgroup or a hung filesystem?); starts of the container wait until it ends: %w",
			what, holder, since.UTC().Format(time.RFC3339), began.UTC().Format(time.RFC3339), time.Since(began).Round(time.Millisecond), ErrUnavailable)}
	}
}

// markStuck declares the holder stuck: it outlived its deadline and grace.
func (t *startTurn) markStuck() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.since = time.Now()
	close(t.stuck)
}

// release ends the holder's turn.
func (t *startTurn) release() {
	t.mu.Lock()
	holder, began, stuck := t.what, t.began, !t.since.IsZero()
	t.stuck = make(chan struct{})
	t.what, t.since = "", time.Time{}
	t.mu.Unlock()
	<-t.ch
	if stuck {
		slog.Info("a stuck start ended; the container's starts run again", "start", holder, "after", time.Since(began).Round(time.Millisecond))
	}
}

// launch runs start bounded by o.timeout. Past it, the hooks the agent runs
// for this start are cancelled and the start's processes (bootstrap stages,
// the half-started init) are killed until start gives up, and launch
// returns an ErrTimeout error. undo then rolls back what start did (its
// error says how far it got): synchronously when start returned within
// launchGrace, else in the background when it finally returns.
func launch(o launchOpts, what string, start func() error, undo func(startErr error)) error {
	timeout := o.timeout
	if timeout <= 0 {
		timeout = DefaultLaunchTimeout
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	release := func() {}
	if o.turn != nil {
		// Waiting for the turn counts against the deadline; a start that
		// never got it did nothing, so there is nothing to undo.
		if err := o.turn.take(what, timeout, timer.C); err != nil {
			return err
		}
		release = o.turn.release
	}
	ctx, cancel := context.WithCancel(context.Background())
	// The hooks' context is cleared only once start has returned: after a
	// timeout, a hook the still-running start reaches gets the cancelled
	// context, not an unbounded one.
	started := func() {}
	if o.hooks != nil {
		o.hooks.set(ctx)
		started = o.hooks.clear
	}
	done := make(chan error, 1)
	go func() { done <- start() }()
	select {
	case err := <-done:
		cancel()
		started()
		release()
		return err
	case <-timer.C:
	}
	cancel()
	if o.mntnsPid != 0 {
		o.mntns = nsInode(o.mntnsPid, "mnt")
	}
	errTimeout := fmt.Errorf("%s: not started within %v: %w: %w", what, timeout, errLaunchTimeout, ErrTimeout)
	if o.kill != nil {
		o.kill()
	}
	killStart(o)
	tick := time.NewTicker(launchKillEvery)
	defer tick.Stop()
	grace := time.NewTimer(launchGrace)
	defer grace.Stop()
	for {
		select {
		case err := <-done:
			started()
			undo(err)
			release()
			return errTimeout
		case <-tick.C:
			killStart(o)
		case <-grace.C:
			if o.turn != nil {
				o.turn.markStuck()
			}
			slog.Warn("a start outlived its deadline and grace; its processes do not die (uninterruptible sleep?): later starts of the container are refused until it ends",
				"start", what, "timeout", timeout)
			go func() {
				stop := make(chan struct{})
				go func() {
					t := time.NewTicker(launchKillEvery)
					defer t.Stop()
					for {
						select {
						case <-stop:
							return
						case <-t.C:
							killStart(o)
						}
					}
				}()
				err := <-done
				close(stop)
				started()
				undo(err)
				release()
			}()
			return errTimeout
		}
	}
}

// killStart SIGKILLs the processes of a start in progress: the agent's
// direct children that the reaper does not watch (started container
// processes are watched) and that are in the container's cgroup or mount
// namespace. libcontainer's bootstrap stages are direct children (its later
// stages are cloned with CLONE_PARENT); the one that entered the container
// (and that a workload can stop) is in its mount namespace, and on cgroup
// v2 or for an init every stage is in its cgroup. The caller holds the
// container's turn (launchOpts.turn), so these belong to its start. Each is
// checked again after its pidfd is opened, so a reused pid is never hit.
func killStart(o launchOpts) {
	inCgroup := map[int]bool{}
	if o.procs != "" {
		if b, err := os.ReadFile(o.procs); err == nil {
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					inCgroup[pid] = true
				}
			}
		}
	}
	if len(inCgroup) == 0 && o.mntns == 0 {
		return
	}
	self := os.Getpid()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	belongs := func(pid int) bool {
		if ppid, _, _ := statOf(pid); ppid != self || reaper.Watched(pid) {
			return false
		}
		return inCgroup[pid] || (o.mntns != 0 && nsInode(pid, "mnt") == o.mntns)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || !belongs(pid) {
			continue
		}
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue
		}
		if belongs(pid) {
			_ = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
		}
		unix.Close(fd)
	}
}

// abandonedStages are the names libcontainer's bootstrap stages carry
// until the container's program is exec'd. Stage 0 (runc:[0:PARENT], the
// os/exec child libcontainer waits with cmd.Wait) is one too: when the
// thread that forked it dies (libcontainer forks an exec from a locked
// thread that then exits when execCPUAffinity is set; a concurrent
// create's mount-source goroutine can kill any thread), the orphan loop
// reaping it made that wait fail with ECHILD and the exec fail
// (TestExecReapedBeforeWatchKeepsNoPidfd).
var abandonedStages = map[string]bool{"runc:[0:PARENT]": true, "runc:[1:CHILD]": true, "runc:[2:INIT]": true}

// starts tracks libcontainer starts in flight. While one runs, its
// bootstrap stages are zombies that libcontainer itself waits (through an
// os.Process holding a pidfd) and that nobody else may reap: should the
// stage's forking thread die, it becomes a child of the main thread, and
// the orphan loop reaping it first made libcontainer's wait fail with
// ECHILD and leave the pidfd open until a garbage collection (seen as
// TestRPCBadInput's "fds 18 -> 19" under load: the loop reaped a failed
// "runc:[2:INIT]"). So the orphan loop holds bootstrap-stage zombies while
// any start is in flight. A failed start reaps the stages it abandoned on
// its own thread (reapThreadStages); those that die later are reaped only
// once no start is in flight (reapAbandonedStages). A start stuck for good
// keeps its own: libcontainer may still turn their pids into handles (see
// SPECIFICATION.md, "Known limits" of the stuck start).
var starts struct {
	// mu is read-held by every start in flight; reapAbandonedStages
	// only ever TryLocks it, so no start waits on a blocking call.
	mu        sync.RWMutex
	n         atomic.Int64 // starts in flight
	abandoned atomic.Bool  // a failed start may have left stages
}

func init() {
	reaper.Hold(func(pid int) bool {
		if starts.n.Load() == 0 {
			return false
		}
		_, _, comm := statOf(pid)
		return abandonedStages[comm]
	})
}

type startInFlight struct{}

func beginStart() startInFlight {
	starts.mu.RLock()
	starts.n.Add(1)
	return startInFlight{}
}

// failed notes that the start may have abandoned bootstrap stages.
func (startInFlight) failed() { starts.abandoned.Store(true) }

// end ends the start; the last one out reaps abandoned stages and wakes
// the orphan loop for the zombies it held.
func (startInFlight) end() {
	last := starts.n.Add(-1) == 0
	starts.mu.RUnlock()
	// Whoever holds mu checks again after releasing it, so a flag set
	// while the TryLock fails is never forgotten.
	for starts.abandoned.Load() && starts.mu.TryLock() {
		if starts.abandoned.Swap(false) {
			reapAbandonedStages()
		}
		starts.mu.Unlock()
	}
	if last {
		reaper.Kick()
	}
}

// reapThreadStages reaps the bootstrap-stage zombies among the calling
// thread's children. startProcess calls it when libcontainer's Start has
// failed, still on the thread it locked for the start: every stage forked
// on that thread belongs to this start or to one that ran on it earlier,
// and both have returned, so libcontainer waits none of them any more (a
// stage whose pid it learnt it has waited, or terminated and waited,
// before Start returned; the others it never learnt). The start's final
// process, should it be one of them, is watched and left alone. This needs
// no "no start in flight" as reapAbandonedStages does, so a start stuck
// elsewhere does not keep a failed start's zombies. Stages still running
// now are left to reapAbandonedStages; without CONFIG_PROC_CHILDREN all of
// them are.
func reapThreadStages() {
	pids, err := reaper.ThreadChildren()
	if err != nil {
		return
	}
	for _, pid := range pids {
		if reaper.Watched(pid) {
			continue
		}
		if _, state, comm := statOf(pid); state != "Z" || !abandonedStages[comm] {
			continue
		}
		// A zombie child keeps its pid until reaped, and __WNOTHREAD
		// takes only this thread's child of that pid.
		var info unix.Siginfo
		_ = unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOHANG|unix.WALL|unix.WNOTHREAD, nil)
	}
}

// reapAbandonedStages reaps bootstrap stages left as zombies by a start
// that failed before libcontainer learnt their pids (a killed stage 0): they
// are children of whatever thread ran the start, so the orphan loop never
// sees them, and a zombie inside a dying pid namespace keeps its init in
// zap_pid_ns_processes. It runs with starts.mu held (no start in flight),
// so it never takes a stage a running start still waits.
func reapAbandonedStages() {
	self := os.Getpid()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	abandoned := func(pid int) bool {
		ppid, state, comm := statOf(pid)
		return ppid == self && state == "Z" && abandonedStages[comm] && !reaper.Watched(pid)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !abandoned(pid) {
			continue
		}
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue
		}
		if abandoned(pid) {
			var info unix.Siginfo
			_ = unix.Waitid(unix.P_PIDFD, fd, &info, unix.WEXITED|unix.WNOHANG|unix.WALL, nil)
		}
		unix.Close(fd)
	}
}

// statOf returns pid's parent, state and name from /proc/<pid>/stat.
func statOf(pid int) (ppid int, state, comm string) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, "", ""
	}
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return 0, "", ""
	}
	f := strings.Fields(s[end+1:])
	if len(f) < 2 {
		return 0, "", ""
	}
	ppid, _ = strconv.Atoi(f[1])
	return ppid, f[0], s[open+1 : end]
}

// nsInode returns the inode of pid's namespace of the given kind (0 when
// unknown).
func nsInode(pid int, kind string) uint64 {
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/%s", pid, kind), &st); err != nil {
		return 0
	}
	return st.Ino
}

// procsFile picks one hierarchy's cgroup.procs among a container's cgroup
// paths (v2: the unified one).
func procsFile(paths map[string]string) string {
	for _, k := range []string{"", "pids", "memory", "cpu", "freezer", "devices"} {
		if p, ok := paths[k]; ok && p != "" {
			return filepath.Join(p, "cgroup.procs")
		}
	}
	for _, p := range paths {
		return filepath.Join(p, "cgroup.procs")
	}
	return ""
}
