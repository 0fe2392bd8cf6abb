package container

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/keelvm/keel/agent/stdio"
	"github.com/keelvm/keel/init/reaper"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// ProcessState is the lifecycle of one container process:
// running → exited (reaped, status kept) → (exec only) collected by Wait.
type ProcessState int

// Process states.
const (
	ProcessRunning ProcessState = iota + 1
	ProcessExited
)

func (s ProcessState) String() string {
	switch s {
	case ProcessRunning:
		return "running"
	case ProcessExited:
		return "exited"
	}
	return fmt.Sprintf("ProcessState(%d)", int(s))
}

// ExitStatus is re-exported from the reaper: Code is the exit code or
// 128+signal.
type ExitStatus = reaper.ExitStatus

// Process is a container's init or exec'd process. Its exit status is kept
// until the container is removed (init) or Wait collects it (exec).
type Process struct {
	ID   string // exec id; the container's exec_id for init
	Init bool
	Pid  int
	io   *stdio.IO
	lp   *libcontainer.Process
	// released: the process was reaped by the orphan loop before the
	// reaper watched it, and lp's os.Process was released then (see
	// releaseOSProcess); set before p is shared, never changed.
	released bool

	done   chan struct{} // closed when reaped
	mu     sync.Mutex
	state  ProcessState
	status ExitStatus
}

// IO returns the process's stdio (nil when it was started without one).
func (p *Process) IO() *stdio.IO { return p.io }

// State returns the process state.
func (p *Process) State() ProcessState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// Done is closed when the process has exited and was reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait blocks until the process exits or ctx is done.
func (p *Process) Wait(ctx context.Context) (ExitStatus, error) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.status, nil
	case <-ctx.Done():
		return ExitStatus{}, fmt.Errorf("waiting for process %q: %w", p.ID, ctx.Err())
	}
}

// signal sends sig through libcontainer's pidfd-backed handle (no pid reuse
// race). Signalling an exited process is not an error, nor is signalling
// one released because it was reaped before its start returned: its
// os.Process then answers "process already released" (neither
// os.ErrProcessDone nor ESRCH) until p.done closes.
func (p *Process) signal(sig unix.Signal) error {
	if p.released {
		return nil
	}
	select {
	case <-p.done:
		return nil
	default:
	}
	err := p.lp.Signal(sig)
	if err == nil || errors.Is(err, os.ErrProcessDone) || errors.Is(err, unix.ESRCH) {
		return nil
	}
	return fmt.Errorf("unable to signal process %q: %w", p.ID, err)
}

// newLibcontainerProcess builds libcontainer's process from the spec and
// the stdio; it does not start it.
func newLibcontainerProcess(sp *specs.Process, io *stdio.IO, init bool) (*libcontainer.Process, error) {
	if err := checkExecArgs(sp, "process"); err != nil {
		return nil, err
	}
	lp := &libcontainer.Process{
		Args: sp.Args,
		Env:  sp.Env,
		Cwd:  sp.Cwd,
		UID:  int(sp.User.UID),
		GID:  int(sp.User.GID),
		Init: init,
		// No AppArmorProfile or Label: they name host policies (see
		// hostOnlyFields), cleared before this point.
		LogLevel: initLogLevel(),
	}
	for _, g := range sp.User.AdditionalGids {
		lp.AdditionalGroups = append(lp.AdditionalGroups, int(g))
	}
	if !init {
		// For init these come from the container config; an exec
		// carries its own.
		nnp := sp.NoNewPrivileges
		lp.NoNewPrivileges = &nnp
		if sp.Capabilities != nil {
			lp.Capabilities = &configs.Capabilities{
				Bounding:    sp.Capabilities.Bounding,
				Effective:   sp.Capabilities.Effective,
				Inheritable: sp.Capabilities.Inheritable,
				Permitted:   sp.Capabilities.Permitted,
				Ambient:     sp.Capabilities.Ambient,
			}
		}
	}
	// rlimits are the process's own, init's included: runc's spec
	// conversion no longer puts them in the container config, and without
	// them the first process would inherit the agent's limits.
	field := "process"
	if init {
		field = "OCI.process"
	}
	for i, r := range sp.Rlimits {
		t, ok := rlimits[r.Type]
		if !ok {
			return nil, fmt.Errorf("%s.rlimits[%d].type %q: unknown rlimit: %w", field, i, r.Type, ErrInvalid)
		}
		lp.Rlimits = append(lp.Rlimits, configs.Rlimit{Type: t, Hard: r.Hard, Soft: r.Soft})
	}
	if sp.Terminal != (io != nil && io.Terminal()) {
		return nil, fmt.Errorf("process.terminal %v: does not match the stdio: %w", sp.Terminal, ErrInvalid)
	}
	if sp.ConsoleSize != nil {
		lp.ConsoleWidth, lp.ConsoleHeight = uint16(sp.ConsoleSize.Width), uint16(sp.ConsoleSize.Height)
	}
	if io != nil {
		if io.Terminal() {
			lp.ConsoleSocket = io.ConsoleSocket()
		} else {
			// Assign only non-nil files: a nil *os.File in an interface
			// is not a nil interface.
			in, out, errf := io.ChildFiles()
			if in != nil {
				lp.Stdin = in
			}
			if out != nil {
				lp.Stdout = out
			}
			if errf != nil {
				lp.Stderr = errf
			}
		}
	}
	return lp, nil
}

// initLogLevel is the log level libcontainer hands the container's init
// and its nsexec bootstrap (_LIBCONTAINER_LOGLEVEL): the level of logrus's
// standard logger, through which the agent forwards the init's log lines
// (libcontainer/logs.ForwardLogs), as runc passes its own --log-level.
// Without it nsexec logs at debug: each bootstrap stage wrote some 20 debug
// lines to the log pipe on the start's critical path, and the agent woke to
// decode each one as JSON only for logrus to drop it (its level is info).
// Fatal lines, which carry a failed start's error, pass at any level.
func initLogLevel() string { return strconv.Itoa(int(logrus.GetLevel())) }

// SetLogLevel sets the level of logrus's standard logger, and so of the
// container inits (initLogLevel), from the agent's slog level: agent.log=debug
// must give nsexec's and the init's debug lines too. Nothing else sets it.
func SetLogLevel(l slog.Level) { logrus.SetLevel(logrusLevel(l)) }

func logrusLevel(l slog.Level) logrus.Level {
	switch {
	case l <= slog.LevelDebug:
		return logrus.DebugLevel
	case l <= slog.LevelInfo:
		return logrus.InfoLevel
	case l <= slog.LevelWarn:
		return logrus.WarnLevel
	default:
		return logrus.ErrorLevel
	}
}

var rlimits = map[string]int{
	"RLIMIT_CPU": unix.RLIMIT_CPU, "RLIMIT_FSIZE": unix.RLIMIT_FSIZE, "RLIMIT_DATA": unix.RLIMIT_DATA,
	"RLIMIT_STACK": unix.RLIMIT_STACK, "RLIMIT_CORE": unix.RLIMIT_CORE, "RLIMIT_RSS": unix.RLIMIT_RSS,
	"RLIMIT_NPROC": unix.RLIMIT_NPROC, "RLIMIT_NOFILE": unix.RLIMIT_NOFILE, "RLIMIT_MEMLOCK": unix.RLIMIT_MEMLOCK,
	"RLIMIT_AS": unix.RLIMIT_AS, "RLIMIT_LOCKS": unix.RLIMIT_LOCKS, "RLIMIT_SIGPENDING": unix.RLIMIT_SIGPENDING,
	"RLIMIT_MSGQUEUE": unix.RLIMIT_MSGQUEUE, "RLIMIT_NICE": unix.RLIMIT_NICE, "RLIMIT_RTPRIO": unix.RLIMIT_RTPRIO,
	"RLIMIT_RTTIME": unix.RLIMIT_RTTIME,
}

// reapVia reaps an exited lp through libcontainer: a successful
// os.Process wait is what closes the pidfd Go keeps for the process (after
// a failed one, ECHILD because someone else reaped, it stays open until a
// garbage collection).
func reapVia(lp *libcontainer.Process) func() (unix.WaitStatus, error) {
	return func() (unix.WaitStatus, error) {
		ps, err := lp.Wait() // an exit code other than 0 is an error with a state
		if ps == nil {
			return 0, fmt.Errorf("unable to wait for the process: %w", err)
		}
		ws, ok := ps.Sys().(syscall.WaitStatus)
		if !ok {
			return 0, fmt.Errorf("unexpected wait status %T", ps.Sys())
		}
		return unix.WaitStatus(ws), nil
	}
}

// releaseOSProcess releases the os.Process libcontainer keeps for lp's
// final process (its pidfd) when the process was reaped by the orphan loop
// before the reaper watched it (see reaper.WatchThen): its wait can only
// fail (ECHILD) and a failed wait keeps the pidfd until a garbage
// collection. libcontainer.Process offers no Release, so the handle is
// reached through its unexported ops (runc v1.5.2: *setnsProcess or
// *initProcess, whose embedded containerProcess.cmd.Process is the final
// process); should an upgrade rename or retype them, nothing is released
// and TestExecReapedBeforeWatchKeepsNoPidfd reports the fd.
//
// Release writes the os.Process's Pid (-1) without a lock. It runs in
// startProcess, before the Process (and, for an init, the Container) is
// shared: every later reader (lp.Pid, lp.Signal, libcontainer's
// initProcess.pid under its own lock) comes after it, never beside it.
func releaseOSProcess(lp *libcontainer.Process) {
	ops := reflect.ValueOf(lp).Elem().FieldByName("ops")
	if !ops.IsValid() || ops.Kind() != reflect.Interface || ops.IsNil() {
		return
	}
	impl := ops.Elem()
	if impl.Kind() != reflect.Pointer || impl.IsNil() || impl.Elem().Kind() != reflect.Struct {
		return
	}
	cmd := impl.Elem().FieldByName("cmd")
	if !cmd.IsValid() || cmd.Type() != reflect.TypeFor[*exec.Cmd]() || cmd.IsNil() {
		return
	}
	if p := (*exec.Cmd)(cmd.UnsafePointer()).Process; p != nil {
		// Nobody waits it any more: libcontainer's own waits ran
		// during its start, and reap is not called for such a process.
		_ = p.Release()
	}
}

// startHook, set by tests only, runs before libcontainer starts process id
// and right after (the process is then an unwatched child).
var startHook func(id, stage string)

// startProcess starts lp in lc (init when lp.Init) and has the reaper
// watch the final pid. No lock is held: libcontainer waits its own
// bootstrap children, which the reaper never takes (see init/reaper). The
// child side of io is closed either way.
func startProcess(lc *libcontainer.Container, lp *libcontainer.Process, id string, io *stdio.IO, onExit func(*Process)) (*Process, error) {
	if startHook != nil {
		startHook(id, "before")
	}
	// The start runs on a thread of its own until it returns, so the
	// processes libcontainer forks for it (stage 0, and stages 1-2 cloned
	// with CLONE_PARENT) are children of this thread and of no other
	// start, and the stages it abandons can be told apart and reaped when
	// it fails (reapThreadStages). Unlocked after inFlight.end (deferred
	// calls run last first).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	inFlight := beginStart()
	defer inFlight.end()
	started := time.Now()
	err := lc.Start(lp)
	if startHook != nil {
		startHook(id, "started")
	}
	if err != nil && lp.Init {
		releaseExecFifo(lc)
	}
	var ch <-chan reaper.ExitStatus
	pid := 0
	released := false
	if err == nil {
		pid, err = lp.Pid()
		if err == nil {
			ch, err = reaper.WatchThen(pid, started, reapVia(lp), func() {
				released = true
				releaseOSProcess(lp)
			})
			if err != nil {
				_ = lp.Signal(unix.SIGKILL)
				_, _ = lp.Wait()
			}
		}
	}
	if io != nil {
		io.CloseChildSide()
	}
	if err != nil {
		reapThreadStages()
		inFlight.failed() // for stages still running now
		return nil, err
	}
	p := &Process{ID: id, Init: lp.Init, Pid: pid, io: io, lp: lp, released: released, done: make(chan struct{}), state: ProcessRunning}
	go func() {
		st := <-ch // reaped by lp.Wait (reapVia), so its pidfd is closed
		if io != nil {
			io.ProcessExited()
		}
		p.mu.Lock()
		p.status, p.state = st, ProcessExited
		p.mu.Unlock()
		// The container's state changes before Done fires, so whoever
		// waited sees a consistent container.
		if onExit != nil {
			onExit(p)
		}
		close(p.done)
	}()
	return p, nil
}

// releaseExecFifo closes the exec fifo handle that libcontainer keeps in
// Container.fifo while an init starts. Its Container.Start closes it only
// when the start succeeds (runc v1.5.2, container_linux.go), so every failed
// create (a missing program, a failing hook, a bad mount) would keep one fd
// until a garbage collection ran the os.File's cleanup. The field is
// unexported, hence reflection; should a libcontainer upgrade rename or
// retype it, nothing is closed and TestNoLeftovers reports the fd.
func releaseExecFifo(lc *libcontainer.Container) {
	v := reflect.ValueOf(lc).Elem().FieldByName("fifo")
	if !v.IsValid() || v.Type() != reflect.TypeFor[*os.File]() || v.IsNil() {
		return
	}
	// Closing twice is harmless (os.ErrClosed); nobody else uses the
	// handle once Start has returned.
	_ = (*os.File)(v.UnsafePointer()).Close()
}

// Kernel limits on execve's arguments (fs/exec.c): one string is at most
// maxArgStrlen bytes with its NUL; all strings plus their pointers fit in a
// quarter of the stack rlimit, capped at 3/4 of _STK_LIM, at least argMax.
const (
	maxArgStrlen = 32 * 4096
	argMax       = 32 * 4096
	stkLimCap    = 8 << 20 / 4 * 3
)

// checkExecArgs refuses a process whose args and env execve would reject
// with E2BIG: libcontainer reports the execve failure only in its log (the
// start looked fine and the process exited 255), so it is caught here with
// a message naming the field.
func checkExecArgs(sp *specs.Process, field string) error {
	stack := uint64(8 << 20)
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_STACK, &rl) == nil {
		stack = rl.Cur
	}
	for _, r := range sp.Rlimits {
		if r.Type == "RLIMIT_STACK" {
			stack = r.Soft
		}
	}
	limit := uint64(stkLimCap)
	if stack/4 < limit {
		limit = stack / 4
	}
	limit = max(limit, argMax)
	total := uint64(len(sp.Args)+len(sp.Env)) * 8
	for name, list := range map[string][]string{"args": sp.Args, "env": sp.Env} {
		for i, s := range list {
			if len(s)+1 > maxArgStrlen {
				return fmt.Errorf("%s.%s[%d]: %d bytes, the kernel takes at most %d per string (E2BIG): %w", field, name, i, len(s), maxArgStrlen-1, ErrInvalid)
			}
			total += uint64(len(s) + 1)
		}
	}
	if total > limit {
		return fmt.Errorf("%s.args and %s.env: %d bytes, over the kernel's %d-byte limit for a new program (E2BIG): %w", field, field, total, limit, ErrInvalid)
	}
	return nil
}
