// Package reaper is Keel's single owner of wait(2).
//
// Keel runs as PID 1 in the guest (or as a child subreaper in host mode), so
// every orphan in the guest is re-parented to it and must be reaped, while
// some children are waited for by other code: container processes (whose exit
// status WaitProcess reports), libcontainer's intermediate bootstrap
// processes, and os/exec commands.
//
// The model is the Kata 1.x agent's: one goroutine reaps every exited child on
// SIGCHLD with wait4(-1, WNOHANG) and delivers the status of pids that someone
// registered. Code that must wait(2) a child itself (libcontainer's Start/Run
// and exec, which wait their bootstrap processes) holds Lock for that time so
// the loop does not steal those children. A status reaped before its pid was
// registered is kept for EarlyRetention (at most MaxEarly entries), so
// "start, then Register" is race-free. os/exec users call Command instead of
// cmd.Run.
//
// The agent's main calls Start first, before any child is created.
package reaper

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// EarlyRetention bounds how long the status of an unregistered pid is
	// kept for a later Register.
	EarlyRetention = 2 * time.Minute
	// MaxEarly bounds how many unregistered statuses are kept; the oldest
	// are dropped first (they are almost always plain orphans).
	MaxEarly = 1024
)

// ExitStatus is how a reaped process ended.
type ExitStatus struct {
	Pid int
	// Code is the exit code, or 128+signal when the process was killed by
	// a signal (the shell's and Kata's WaitProcess convention).
	Code int
	// Signal is the terminating signal, 0 when the process exited.
	Signal unix.Signal
}

func (s ExitStatus) String() string {
	if s.Signal != 0 {
		return fmt.Sprintf("pid %d killed by %v (status %d)", s.Pid, s.Signal, s.Code)
	}
	return fmt.Sprintf("pid %d exited with %d", s.Pid, s.Code)
}

// FromWaitStatus converts a wait(2) status.
func FromWaitStatus(pid int, ws unix.WaitStatus) ExitStatus {
	if ws.Signaled() {
		return ExitStatus{Pid: pid, Code: 128 + int(ws.Signal()), Signal: ws.Signal()}
	}
	return ExitStatus{Pid: pid, Code: ws.ExitStatus()}
}

type early struct {
	st ExitStatus
	at time.Time
}

type orderEntry struct {
	pid int
	at  time.Time
}

type reaper struct {
	// reapMu is held by the loop while it reaps and by Lock's callers while
	// they wait(2) children themselves.
	reapMu sync.Mutex

	mu      sync.Mutex // guards the fields below
	started bool
	waiters map[int]chan ExitStatus
	early   map[int]early
	order   []orderEntry // early's pids in reap order, for eviction
	reaped  uint64
}

var r = &reaper{waiters: map[int]chan ExitStatus{}, early: map[int]early{}}

// Start makes this process a child subreaper and starts the reap loop. It is
// idempotent; main calls it before creating any child.
func Start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started {
		return nil
	}
	if os.Getpid() != 1 {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("unable to become child subreaper: %w", err)
		}
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, unix.SIGCHLD)
	r.started = true
	go func() {
		// A periodic pass covers a SIGCHLD that coalesced while a Lock
		// holder waited its own child and another one exited.
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ch:
			case <-t.C:
			}
			r.reapAll()
		}
	}()
	// Children that exited before Start.
	go r.reapAll()
	return nil
}

// Started reports whether Start was called.
func Started() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.started
}

// Lock stops the reap loop until Unlock, for code that waits a specific child
// itself (libcontainer Start/Run, exec). Keep it short: orphans stay zombies
// meanwhile.
func Lock() { r.reapMu.Lock() }

// Unlock resumes reaping and reaps what exited meanwhile.
func Unlock() {
	r.reapMu.Unlock()
	if Started() {
		go r.reapAll()
	}
}

// Register returns a channel that receives pid's exit status exactly once.
// Call it with Lock held between starting the process and Unlock, or at any
// time up to EarlyRetention after the process exited. Prefer RegisterSince
// when the start time is known: a kept status may belong to an earlier
// process that had the same pid.
func Register(pid int) <-chan ExitStatus { return RegisterSince(pid, time.Time{}) }

// RegisterSince is Register for a process started at or after started: a
// kept status reaped before that belongs to an earlier user of the pid
// (pid reuse) and is dropped instead of delivered.
func RegisterSince(pid int, started time.Time) <-chan ExitStatus {
	ch := make(chan ExitStatus, 1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.early[pid]; ok {
		delete(r.early, pid)
		if !e.at.Before(started) {
			ch <- e.st
			return ch
		}
	}
	r.waiters[pid] = ch
	return ch
}

// Unregister forgets a registration made by Register (e.g. when the start
// that followed failed and libcontainer waited the pid itself).
func Unregister(pid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.waiters, pid)
}

// Reaped returns how many children the loop reaped so far.
func Reaped() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reaped
}

func (r *reaper) reapAll() {
	r.reapMu.Lock()
	defer r.reapMu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		if !ws.Exited() && !ws.Signaled() {
			continue
		}
		r.deliver(FromWaitStatus(pid, ws))
	}
}

func (r *reaper) deliver(st ExitStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reaped++
	if ch, ok := r.waiters[st.Pid]; ok {
		delete(r.waiters, st.Pid)
		ch <- st
		return
	}
	now := time.Now()
	// Evict expired or excess entries, oldest first. order may hold pids
	// already consumed by Register (skipped) or reused (the entry's time
	// tells them apart).
	for len(r.order) > 0 {
		o := r.order[0]
		e, ok := r.early[o.pid]
		if ok && e.at.Equal(o.at) && len(r.early) < MaxEarly && now.Sub(e.at) < EarlyRetention {
			break
		}
		r.order = r.order[1:]
		if ok && e.at.Equal(o.at) {
			delete(r.early, o.pid)
		}
	}
	r.early[st.Pid] = early{st: st, at: now}
	r.order = append(r.order, orderEntry{st.Pid, now})
}

// Command starts cmd and waits for it through the reaper, which os/exec users
// must do instead of cmd.Run once Start was called. The returned error is
// about starting cmd; the exit status is in ExitStatus (a non-zero status is
// not an error). Without Start it falls back to cmd.Run.
func Command(cmd *exec.Cmd) (ExitStatus, error) {
	if !Started() {
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			ws, _ := ee.Sys().(unix.WaitStatus)
			return FromWaitStatus(ee.Pid(), ws), nil
		}
		if err != nil {
			return ExitStatus{}, err
		}
		return ExitStatus{Pid: cmd.ProcessState.Pid()}, nil
	}
	Lock()
	started := time.Now()
	if err := cmd.Start(); err != nil {
		Unlock()
		return ExitStatus{}, err
	}
	ch := RegisterSince(cmd.Process.Pid, started)
	Unlock()
	st := <-ch
	// The process is reaped already: Wait fails with ECHILD but still
	// finishes the copying goroutines and closes the pipes.
	_ = cmd.Wait()
	return st, nil
}
