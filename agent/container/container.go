package container

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keelvm/keel/agent/ociconv"
	"github.com/keelvm/keel/agent/stdio"
	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// State is a container's lifecycle state. Transitions:
//
//	created --Start--> running --Pause--> paused --Resume--> running
//	created|running|paused --init exits--> stopped
//	any --Remove--> removed (gone from the sandbox)
type State int

// Container states.
const (
	StateCreated State = iota + 1
	StateRunning
	StatePaused
	StateStopped
	StateRemoved
)

func (s State) String() string {
	switch s {
	case StateCreated:
		return "created"
	case StateRunning:
		return "running"
	case StatePaused:
		return "paused"
	case StateStopped:
		return "stopped"
	case StateRemoved:
		return "removed"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Container wraps a libcontainer container and its processes.
type Container struct {
	id string
	lc *libcontainer.Container
	// spec shares slices, maps and pointers with lc's configuration
	// (ociconv.ToConfig makes shallow copies): neither may be changed in
	// place after Create; replace a part instead, as Update does.
	spec         *specs.Spec
	privatePidns bool
	init         *Process
	launch       launchOpts // bounds Start and Exec
	log          *slog.Logger

	mu      sync.Mutex
	state   State
	execs   map[string]*Process
	retired map[string]*Process // collected execs whose stdio lingers
	pending map[string]bool     // exec ids being started
	// starting is set while Start runs (without c.mu: a start may block
	// until its launch deadline).
	starting bool
	// execvePending is set by Start until someone saw the init exec the
	// container's program (see settleStart).
	execvePending bool
}

// ID returns the container id.
func (c *Container) ID() string { return c.id }

// Spec returns the (agent-adjusted) spec the container was created from.
func (c *Container) Spec() *specs.Spec { return c.spec }

// State returns the current state.
func (c *Container) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// InitProcess returns the container's first process.
func (c *Container) InitProcess() *Process { return c.init }

// Process returns the init process for an empty execID or the container's
// exec id, else one started by Exec.
func (c *Container) Process(execID string) (*Process, error) {
	if execID == "" || execID == c.init.ID {
		return c.init, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok {
		return nil, fmt.Errorf("exec_id %q: no such process in container %q: %w", execID, c.id, ErrNotFound)
	}
	return p, nil
}

// ForgetProcess drops an exited exec'd process after its status was
// collected (Kata removes it on WaitProcess) and closes its stdio at once.
// Init is kept until Remove.
func (c *Container) ForgetProcess(p *Process) { c.RetireProcess(p, 0) }

// RetireProcess is ForgetProcess for the RPC path: the exec id is free at
// once, but the stdio stays reachable through StdioProcess for linger, so
// a host still draining ReadStdout after WaitProcess loses nothing.
func (c *Container) RetireProcess(p *Process, linger time.Duration) {
	if p.Init || p.State() != ProcessExited {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.execs[p.ID] == p {
		delete(c.execs, p.ID)
	}
	if p.io == nil {
		return
	}
	if linger <= 0 || c.state == StateRemoved {
		p.io.Close()
		return
	}
	if old := c.retired[p.ID]; old != nil && old != p {
		old.io.Close()
	}
	c.retired[p.ID] = p
	time.AfterFunc(linger, func() {
		c.mu.Lock()
		if c.retired[p.ID] == p {
			delete(c.retired, p.ID)
		}
		c.mu.Unlock()
		p.io.Close()
	})
}

// StdioProcess is Process, also finding exec'd processes retired within
// their linger time (for the stdio RPCs).
func (c *Container) StdioProcess(execID string) (*Process, error) {
	p, err := c.Process(execID)
	if err == nil {
		return p, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if r, ok := c.retired[execID]; ok {
		return r, nil
	}
	return nil, err
}

// initExited is called by the reaper goroutine of init.
func (c *Container) initExited(*Process) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != StateRemoved {
		c.state = StateStopped
	}
}

// Start releases the init process created by Sandbox.CreateContainer
// (runc start: libcontainer Exec opens the exec fifo and runs the poststart
// hooks). It is bounded by the launch timeout: past it the container is
// killed (it stops) and Start fails with ErrTimeout.
func (c *Container) Start() error {
	c.mu.Lock()
	if c.state != StateCreated || c.starting {
		st := c.state
		c.mu.Unlock()
		if st == StateCreated {
			return fmt.Errorf("container %q is being started: %w", c.id, ErrState)
		}
		return fmt.Errorf("container %q is %v, not created: %w", c.id, st, ErrState)
	}
	c.starting = true
	c.mu.Unlock()
	lo := c.launch
	// A stopped init never writes the exec fifo: killing it ends Exec.
	lo.kill = func() { _ = c.init.signal(unix.SIGKILL) }
	err := launch(lo, fmt.Sprintf("start container %q", c.id), c.lc.Exec, func(error) {
		ctx, cancel := context.WithTimeout(context.Background(), launchGrace)
		defer cancel()
		if err := c.kill(ctx); err != nil {
			slog.Warn("kill of timed-out start", "container_id", c.id, "err", err)
		}
	})
	c.mu.Lock()
	c.starting = false
	if err == nil && c.state == StateCreated {
		c.state = StateRunning
		c.execvePending = true
	}
	c.mu.Unlock()
	if launchError(err) {
		return err
	}
	if err != nil {
		return fmt.Errorf("unable to start container %q: %w", c.id, err)
	}
	return nil
}

// runcInitComm is the name libcontainer's init carries until it execs the
// container's program.
const runcInitComm = "runc:[2:INIT]"

// startSettle bounds how long an operation waits for the init to execve.
const startSettle = time.Second

// settleStart waits (at most startSettle) until the init has exec'd the
// container's program. libcontainer's Exec returns when the init has
// written the exec fifo, a moment before it runs the startContainer hooks
// and execs the program. Start does not wait for that (as in Kata, whose
// StartContainer answers once the fifo is written): only what must meet
// the program rather than runc's init waits, here: a signal's handling
// depends on the program's handlers (SIGTERM escalation) and an exec'd
// process should join the program, not its still-running init. The wait
// happens once per container (an init held past startSettle by a hook
// does not delay every later call again), as Start's wait did before.
func (c *Container) settleStart() {
	c.mu.Lock()
	pending := c.execvePending
	c.mu.Unlock()
	if !pending {
		return
	}
	c.awaitExecve()
	c.mu.Lock()
	c.execvePending = false
	c.mu.Unlock()
}

// awaitExecve polls init's name until it is no longer runc's (exec'd or
// gone), at most startSettle. The polls start fine (the execve is
// typically under a millisecond away) and back off to 1 ms.
func (c *Container) awaitExecve() {
	deadline := time.Now().Add(startSettle)
	path := fmt.Sprintf("/proc/%d/comm", c.init.Pid)
	pause := 50 * time.Microsecond
	for time.Now().Before(deadline) {
		select {
		case <-c.init.done:
			return
		default:
		}
		b, err := os.ReadFile(path)
		if err != nil || strings.TrimSpace(string(b)) != runcInitComm {
			return
		}
		time.Sleep(pause)
		pause = min(2*pause, time.Millisecond)
	}
}

// Exec starts another process in the running container. A program that
// does not exist fails here, at once (kata-containers#8026). The process
// owns io from now on: it is closed when Exec fails.
func (c *Container) Exec(execID string, sp *specs.Process, io *stdio.IO) (_ *Process, retErr error) {
	defer func() {
		if retErr != nil && io != nil {
			io.Close()
		}
	}()
	if err := ValidateID("exec_id", execID); err != nil {
		return nil, err
	}
	if err := ociconv.ValidateProcess(sp, "process"); err != nil {
		return nil, err
	}
	c.settleStart()
	c.mu.Lock()
	if c.state != StateRunning {
		defer c.mu.Unlock()
		return nil, fmt.Errorf("container %q is %v, not running: %w", c.id, c.state, ErrState)
	}
	if _, ok := c.execs[execID]; ok || c.pending[execID] || execID == c.init.ID {
		defer c.mu.Unlock()
		return nil, fmt.Errorf("exec_id %q: already exists in container %q: %w", execID, c.id, ErrExists)
	}
	c.pending[execID] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, execID)
		c.mu.Unlock()
	}()
	if cleared := hostOnlyFields(sp, "process", nil); len(cleared) > 0 {
		c.log.Info("host-only fields ignored (no such policy in the guest)", "container_id", c.id, "exec_id", execID, "fields", cleared)
	}
	lp, err := newLibcontainerProcess(sp, io, false)
	if err != nil {
		return nil, err
	}
	var p *Process
	// Execs run no hooks: the container's hookCtl belongs to Start.
	lo := launchOpts{timeout: c.launch.timeout, procs: c.launch.procs, mntnsPid: c.init.Pid, turn: c.launch.turn}
	err = launch(lo, fmt.Sprintf("exec %q in container %q", execID, c.id), func() error {
		var err error
		p, err = startProcess(c.lc, lp, execID, io, nil)
		return err
	}, func(startErr error) {
		if startErr == nil {
			p.killAndWait()
		}
	})
	if launchError(err) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("unable to exec %q in container %q: %w", sp.Args[0], c.id, classifyStartErr(err))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == StateRemoved {
		// Removed while starting: nothing will collect it.
		go p.killAndWait()
		return nil, fmt.Errorf("container %q was removed: %w", c.id, ErrState)
	}
	c.execs[execID] = p
	return p, nil
}

// classifyStartErr marks a missing or non-executable program as invalid
// input rather than an internal failure.
func classifyStartErr(err error) error {
	s := err.Error()
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EACCES) ||
		strings.Contains(s, "no such file or directory") || strings.Contains(s, "executable file not found") ||
		strings.Contains(s, "permission denied") {
		return fmt.Errorf("%v: %w", err, ErrInvalid)
	}
	return err
}

// catchesSignal reports whether pid has a handler for sig (SigCgt in
// /proc/<pid>/status). Unknown counts as caught (no escalation).
func catchesSignal(pid int, sig unix.Signal) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return true
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "SigCgt:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return true
			}
			return mask&(1<<(uint(sig)-1)) != 0
		}
	}
	return true
}

// Signal sends sig to the process execID ("" = init). SIGTERM to an init
// that has no SIGTERM handler, in its own pid namespace, becomes SIGKILL
// (as in Kata). When the container
// shares a pid namespace (the sandbox's or the agent's), SIGKILL and SIGTERM
// to init go to every process of the container: without a private pid
// namespace the kernel would not take the others down with init.
func (c *Container) Signal(execID string, sig unix.Signal) error {
	if sig <= 0 || sig > maxSignal {
		return fmt.Errorf("signal %d: %w", int(sig), ErrInvalid)
	}
	p, err := c.Process(execID)
	if err != nil {
		return err
	}
	if p.Init {
		c.settleStart()
	}
	if p.Init && c.privatePidns && sig == unix.SIGTERM && !catchesSignal(p.Pid, sig) {
		// The kernel drops signals a pid namespace's init does not
		// handle, so SIGTERM would never stop it: Kata's agent sends
		// SIGKILL instead, and so do we.
		sig = unix.SIGKILL
	}
	if p.Init && !c.privatePidns && (sig == unix.SIGKILL || sig == unix.SIGTERM) {
		return c.signalAll(sig)
	}
	if p.Init && sig == unix.SIGKILL {
		// Thaws a paused (cgroup v1) container so the kill takes effect.
		if err := c.lc.Signal(sig); err != nil && !errors.Is(err, libcontainer.ErrNotRunning) {
			return fmt.Errorf("unable to kill container %q: %w", c.id, err)
		}
		return nil
	}
	return p.signal(sig)
}

func (c *Container) signalAll(sig unix.Signal) error {
	if sig == unix.SIGKILL {
		// cgroup.kill when present, else freeze+kill+thaw.
		if err := c.lc.Signal(sig); err != nil && !errors.Is(err, libcontainer.ErrNotRunning) && !errors.Is(err, libcontainer.ErrCgroupNotExist) {
			return fmt.Errorf("unable to kill container %q: %w", c.id, err)
		}
		return nil
	}
	pids, err := c.lc.Processes()
	if err != nil {
		return c.init.signal(sig)
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("unable to signal pid %d of container %q: %w", pid, c.id, err)
		}
	}
	return nil
}

// Pause freezes every process of the container.
func (c *Container) Pause() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Only running: libcontainer would resume a paused created container
	// as running, losing the created state.
	if c.state != StateRunning {
		return fmt.Errorf("container %q is %v, not running: %w", c.id, c.state, ErrState)
	}
	// The cgroup v1 freezer gives up after a bounded number of polls when
	// the machine is busy; libcontainer thaws again on failure, so retry.
	var err error
	for i := range pauseAttempts {
		if err = c.lc.Pause(); err == nil {
			break
		}
		time.Sleep(time.Duration(i+1) * 20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("unable to pause container %q: %w", c.id, err)
	}
	c.state = StatePaused
	return nil
}

// Resume thaws a paused container.
func (c *Container) Resume() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != StatePaused {
		return fmt.Errorf("container %q is %v, not paused: %w", c.id, c.state, ErrState)
	}
	if err := c.lc.Resume(); err != nil {
		return fmt.Errorf("unable to resume container %q: %w", c.id, err)
	}
	c.state = StateRunning
	return nil
}

// Update applies new cgroup resources (device rules are kept).
func (c *Container) Update(r *specs.LinuxResources) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == StateStopped || c.state == StateRemoved {
		return fmt.Errorf("container %q is %v: %w", c.id, c.state, ErrState)
	}
	cfg := c.lc.Config()
	res, err := ociconv.Resources(cfg.Cgroups.Resources, r)
	if err != nil {
		return err
	}
	cfg.Cgroups.Resources = res
	if err := c.lc.Set(cfg); err != nil {
		return fmt.Errorf("unable to update container %q resources: %w", c.id, err)
	}
	return nil
}

// NetDev is one line of /proc/<pid>/net/dev.
type NetDev struct {
	Name                                    string
	RxBytes, RxPackets, RxErrors, RxDropped uint64
	TxBytes, TxPackets, TxErrors, TxDropped uint64
}

// Stats is a container's resource usage.
type Stats struct {
	Cgroup  *cgroups.Stats
	Network []NetDev
}

// Stats reads the cgroup statistics and the network counters of the
// container's network namespace (through its init's /proc/<pid>/net/dev).
func (c *Container) Stats() (*Stats, error) {
	st, err := c.lc.Stats()
	if err != nil {
		return nil, fmt.Errorf("unable to read stats of container %q: %w", c.id, err)
	}
	out := &Stats{Cgroup: st.CgroupStats}
	if c.init.State() == ProcessRunning {
		out.Network, _ = readNetDev(fmt.Sprintf("/proc/%d/net/dev", c.init.Pid))
	}
	return out, nil
}

func readNetDev(path string) ([]NetDev, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []NetDev
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(rest)
		if len(fs) < 16 {
			continue
		}
		n := make([]uint64, 16)
		for i := range n {
			n[i], _ = strconv.ParseUint(fs[i], 10, 64)
		}
		out = append(out, NetDev{Name: strings.TrimSpace(name),
			RxBytes: n[0], RxPackets: n[1], RxErrors: n[2], RxDropped: n[3],
			TxBytes: n[8], TxPackets: n[9], TxErrors: n[10], TxDropped: n[11]})
	}
	return out, sc.Err()
}

// Pids lists the host pids of the container's processes.
func (c *Container) Pids() ([]int, error) { return c.lc.Processes() }

// kill SIGKILLs every process and waits until init and every exec'd process
// are reaped, or until ctx is done.
func (c *Container) kill(ctx context.Context) error {
	if c.init.State() == ProcessRunning {
		if err := c.signalAll(unix.SIGKILL); err != nil {
			return err
		}
	}
	c.mu.Lock()
	procs := []*Process{c.init}
	for _, p := range c.execs {
		procs = append(procs, p)
	}
	c.mu.Unlock()
	for _, p := range procs {
		select {
		case <-p.done:
		case <-ctx.Done():
			return fmt.Errorf("container %q: process %q (pid %d) did not die: %w", c.id, p.ID, p.Pid, ErrTimeout)
		}
	}
	return nil
}

// destroy releases libcontainer's resources (cgroup, state dir) and the
// stdio of every process; the processes must be gone.
func (c *Container) destroy() error {
	err := destroyLocked(c.lc)
	c.mu.Lock()
	c.state = StateRemoved
	procs := []*Process{c.init}
	for _, p := range c.execs {
		procs = append(procs, p)
	}
	for _, p := range c.retired {
		procs = append(procs, p)
	}
	c.execs, c.retired = map[string]*Process{}, map[string]*Process{}
	c.mu.Unlock()
	for _, p := range procs {
		if p.io != nil {
			p.io.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("unable to destroy container %q: %w", c.id, err)
	}
	return nil
}

// destroyLocked runs libcontainer's Destroy (poststop hooks run there
// through os/exec, which waits its own child; no reaper lock is needed).
func destroyLocked(lc *libcontainer.Container) error {
	return lc.Destroy()
}

// removeTimeout turns RemoveContainer's timeout (seconds; 0 = no limit)
// into a context.
func removeTimeout(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, timeout)
}

// pauseAttempts bounds Pause's retries of a freeze that did not settle.
const pauseAttempts = 8

// maxSignal is SIGRTMAX on Linux.
const maxSignal = 64
