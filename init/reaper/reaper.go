// Package reaper is Keel's owner of wait(2) for processes nobody else waits.
//
// Keel runs as PID 1 in the guest (or as a child subreaper in host mode), so
// every orphan in the guest is re-parented to it and must be reaped, while
// other code waits its own children: libcontainer's Start/Run wait their
// bootstrap processes, OCI hooks and os/exec commands wait theirs.
//
// # Design: no lock across a process start
//
// An earlier design reaped everything with wait4(-1) and made code that
// waits its own children hold a global lock meanwhile. One stalled start (a
// hook that never returns, a bootstrap process stopped by a workload) then
// held the lock forever: nothing was reaped and every other start hung. Now
// the two kinds of children are told apart by the kernel, so nobody needs a
// lock:
//
//   - Orphans are re-parented to the main thread (the thread group leader):
//     the kernel hands a dead parent's children to the first live thread of
//     the subreaper or init process, which is the leader. This package's
//     init locks the main goroutine to the main thread, so no other
//     goroutine ever runs there and nothing forks from it. RunMain makes the
//     main goroutine reap with wait4(-1, __WNOTHREAD|WNOHANG) on SIGCHLD:
//     __WNOTHREAD limits wait to the calling thread's own children, which
//     are exactly the orphans. Children forked by any other thread (every
//     os/exec command, every libcontainer process, including its CLONE_PARENT
//     bootstrap stages) are never touched, so their owners wait them freely.
//   - Processes whose exit someone wants to know but that nobody waits
//     (a container's init and exec'd processes once libcontainer's start
//     returned) are registered with Watch: a pidfd is opened (the process is
//     our unreaped child, so its pid cannot be reused meanwhile), polled
//     through Go's netpoller (no thread per process), and reaped with
//     waitid(P_PIDFD) the moment it becomes readable.
//
// A forked child can still reach the main thread: Go lets a locked OS
// thread die (libcontainer's mount-source goroutine does, often on the
// thread that forked the container's init), and the children of a dying
// thread are re-parented to the leader. The orphan loop leaves such a child
// to its watcher when it is watched, so its owner's own wait (and the
// release of the owner's pidfd) still succeeds. Both paths deliver through
// one table: a status reaped for a pid nobody registered yet (one that
// exited before Watch) is kept EarlyRetention (at most MaxEarly entries).
//
// os/exec users simply run their command (Command is kept as a helper that
// converts the exit status). The agent's main calls RunMain first; Start
// (idempotent) makes a host-mode process a child subreaper.
package reaper

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The main goroutine stays on the main thread (see the package doc): no
// other goroutine runs, and so forks, there. Go documents that LockOSThread
// in an init function makes main run on the main thread.
func init() { runtime.LockOSThread() }

const (
	// EarlyRetention bounds how long the status of an unregistered pid is
	// kept for a later Register.
	EarlyRetention = 2 * time.Minute
	// MaxEarly bounds how many unregistered statuses are kept; the oldest
	// are dropped first (they are almost always plain orphans).
	MaxEarly = 1024
	// orphanPoll is the orphan loop's periodic pass, which covers a
	// SIGCHLD the kernel coalesced with one meant for another thread.
	orphanPoll = time.Second
	// aroundEvery bounds how often reapAround runs while a zombie left
	// alone stays in front of wait(P_ALL). A pass costs a read of the
	// main thread's children list and a waitid per child: run on every
	// SIGCHLD, a workload that keeps such a zombie in front (a process
	// named like a bootstrap stage while a start is stuck) and forks
	// orphans by the thousand would make PID 1's main thread do O(N)
	// syscalls per exit. The orphans behind it wait at most this long.
	aroundEvery = 100 * time.Millisecond
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
	mu          sync.Mutex // guards the fields below
	started     bool
	mainRunning bool
	waiters     map[int]chan ExitStatus
	watched     map[int]bool // pids with a pidfd watcher
	early       map[int]early
	order       []orderEntry // early's pids in reap order, for eviction
	reaped      uint64
	// kick wakes the orphan loop after a watcher reaped a process the
	// loop had to leave alone (see reapOrphans).
	kick chan struct{}
	// held, when set, names zombies the orphan loop must leave to the
	// thread that forked them (see Hold).
	held atomic.Pointer[func(pid int) bool]
	// aroundAt is when reapAround last ran (main thread only).
	aroundAt time.Time
	// arounds counts reapAround passes (tests check the rate bound).
	arounds atomic.Uint64
}

var r = &reaper{waiters: map[int]chan ExitStatus{}, watched: map[int]bool{}, early: map[int]early{}, kick: make(chan struct{}, 1)}

// Start makes this process a child subreaper (host mode; PID 1 is the
// reaper of its namespace anyway). It is idempotent.
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
	r.started = true
	return nil
}

// Started reports whether Start was called.
func Started() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.started
}

// OrphansReaped reports whether RunMain's orphan loop runs.
func OrphansReaped() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mainRunning
}

// ErrNotMainThread is returned by RunMain when it is not called from the
// main goroutine (which this package's init locks to the main thread).
var ErrNotMainThread = errors.New("reaper: RunMain must be called from the main goroutine")

// RunMain calls Start, runs f on a new goroutine and reaps orphans on the
// calling (main) thread until f returns. Call it first thing in main (or
// TestMain): a child forked by the main goroutine before would be taken for
// an orphan. Off the main thread it runs f without reaping orphans and
// returns ErrNotMainThread after f returns.
func RunMain(f func()) error {
	if err := Start(); err != nil {
		return err
	}
	if unix.Gettid() != unix.Getpid() {
		f()
		return ErrNotMainThread
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, unix.SIGCHLD)
	defer signal.Stop(sig)
	r.mu.Lock()
	r.mainRunning = true
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.mainRunning = false
		r.mu.Unlock()
	}()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	t := time.NewTicker(orphanPoll)
	defer t.Stop()
	// retry re-runs the loop when a rate-limited reapAround was put off,
	// so the last orphans of a burst are reaped without another SIGCHLD.
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	retrying := false
	for {
		if wait := r.reapOrphans(time.Now()); wait > 0 && !retrying {
			retry.Reset(wait)
			retrying = true
		}
		select {
		case <-sig:
		case <-r.kick:
		case <-t.C:
		case <-retry.C:
			retrying = false
		case <-done:
			return nil
		}
	}
}

// reapOrphans reaps the main thread's own children: the orphans. Must run on
// the main thread.
//
// A watched process is left to its watcher even when it became the main
// thread's child: that happens when the thread that forked it died (a
// goroutine exited while locked to it, as libcontainer's mount-source
// goroutine does on the thread that forked the container's init). Reaping
// it here would make the owner's wait fail with ECHILD, and an os.Process
// whose wait failed keeps its pidfd until a garbage collection. Each
// zombie is peeked at with WNOWAIT first; a watched (or held) one ends the
// pass of wait(P_ALL), which cannot skip it: the zombies behind it are then
// reaped by pid (reapAround), and its watcher kicks the loop once it has
// reaped it. reapAround runs at most once per aroundEvery: when it is put
// off, reapOrphans returns how long until it may run, for the caller to
// run the pass again then.
func (r *reaper) reapOrphans(now time.Time) time.Duration {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT|unix.WALL|unix.WNOTHREAD, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0
		}
		st, ok := fromSiginfo(&info)
		if !ok {
			return 0 // no zombie child
		}
		// The check and the reap are one step under r.mu (wait4 with
		// WNOHANG does not block), so a WatchThen that marked the pid
		// meanwhile is never overtaken.
		// A zombie its forker still means to wait (see Hold) ends the
		// pass like a watched one; Release kicks the loop.
		if r.left(st.Pid) {
			return r.reapAroundLimited(now)
		}
		var ws unix.WaitStatus
		r.mu.Lock()
		if r.watched[st.Pid] {
			r.mu.Unlock()
			return r.reapAroundLimited(now)
		}
		pid, err := unix.Wait4(st.Pid, &ws, unix.WNOHANG|unix.WALL|unix.WNOTHREAD, nil)
		r.mu.Unlock()
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return 0
		}
		if !ws.Exited() && !ws.Signaled() {
			continue
		}
		r.deliver(FromWaitStatus(pid, ws))
	}
}

// left reports whether the orphan loop must leave pid's zombie alone: it
// is held (Hold) or watched.
func (r *reaper) left(pid int) bool {
	if hold := r.held.Load(); hold != nil && (*hold)(pid) {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.watched[pid]
}

// reapAroundLimited runs reapAround unless it ran less than aroundEvery
// ago; then it returns how long until it may run again.
func (r *reaper) reapAroundLimited(now time.Time) time.Duration {
	if since := now.Sub(r.aroundAt); !r.aroundAt.IsZero() && since >= 0 && since < aroundEvery {
		return aroundEvery - since
	}
	r.aroundAt = now
	r.reapAround()
	return 0
}

// reapAround reaps, one by one, the main thread's zombie children that need
// not be left alone, when wait(P_ALL) keeps returning one that must be (a
// start's held bootstrap stage, a watched process): a zombie left for as
// long as a start is stuck must not stop every other orphan of the guest
// from being reaped meanwhile. The children are listed in
// /proc/self/task/<tid>/children (CONFIG_PROC_CHILDREN, set in Keel's
// guest kernel and in Debian's); without it, every process whose parent is
// this one is tried instead (from /proc/<pid>/stat), and waitid with
// __WNOTHREAD refuses those that are not the main thread's. Must run on
// the main thread; reapAroundLimited bounds how often.
func (r *reaper) reapAround() {
	r.arounds.Add(1)
	for _, pid := range threadChildrenOrAll() {
		r.reapLeftBehind(pid)
	}
}

// reapLeftBehind reaps pid (a child of the main thread, listed by
// reapAround) if it is a zombie the orphan loop need not leave alone.
func (r *reaper) reapLeftBehind(pid int) {
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT|unix.WALL|unix.WNOTHREAD, nil); err != nil {
		return
	}
	if _, ok := fromSiginfo(&info); !ok || r.left(pid) {
		return // running, or to be left alone
	}
	var ws unix.WaitStatus
	r.mu.Lock()
	if r.watched[pid] {
		r.mu.Unlock()
		return
	}
	got, err := unix.Wait4(pid, &ws, unix.WNOHANG|unix.WALL|unix.WNOTHREAD, nil)
	r.mu.Unlock()
	if err == nil && got == pid && (ws.Exited() || ws.Signaled()) {
		r.deliver(FromWaitStatus(pid, ws))
	}
}

// noProcChildren makes threadChildrenOrAll take its fallback (tests).
var noProcChildren atomic.Bool

// ThreadChildren lists the calling thread's children from
// /proc/self/task/<tid>/children. It fails without CONFIG_PROC_CHILDREN.
// The caller should hold its OS thread (runtime.LockOSThread) for the
// answer to mean anything.
func ThreadChildren() ([]int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/children", unix.Gettid()))
	if err != nil {
		return nil, fmt.Errorf("unable to list the thread's children: %w", err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// threadChildrenOrAll lists the calling thread's children, or, without
// CONFIG_PROC_CHILDREN, every child of this process (a superset).
func threadChildrenOrAll() []int {
	if !noProcChildren.Load() {
		if pids, err := ThreadChildren(); err == nil {
			return pids
		}
	}
	var pids []int
	d, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	self := os.Getpid()
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid <= 0 {
			continue
		}
		if b, err := os.ReadFile("/proc/" + name + "/stat"); err == nil && statPPid(b) == self {
			pids = append(pids, pid)
		}
	}
	return pids
}

// statPPid returns the parent pid field of /proc/<pid>/stat, -1 when it
// cannot be parsed. The command name before it may hold spaces and
// parentheses, so the fields are counted from its last ')'.
func statPPid(b []byte) int {
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(s[i+1:]) // state, ppid, ...
	if len(f) < 2 {
		return -1
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return -1
	}
	return ppid
}

// Watch reaps pid, an unreaped child of this process that nobody else
// waits (a container process after libcontainer's start returned), as soon
// as it exits, and delivers its status once on the returned channel. started
// is when the process was started (see RegisterSince).
func Watch(pid int, started time.Time) (<-chan ExitStatus, error) {
	return WatchThen(pid, started, nil, nil)
}

// WatchThen is Watch for a process whose other owner holds a handle on it
// (libcontainer's os.Process, with its own pidfd that only a successful
// wait releases): once pid has exited it is left unreaped and reap is
// called, which must reap it (e.g. libcontainer.Process.Wait) and return
// its wait status. Should reap fail, the process is reaped here. A nil reap
// is Watch.
//
// The orphan loop may have reaped pid before this call marked it: its
// forking thread died (a goroutine exited locked to it), which made it the
// main thread's child, and it exited before its owner got here. Its status
// is then delivered as kept, reap is not called (no wait can succeed any
// more), and release is, when not nil: the owner drops its handle there
// (os.Process.Release), or it stays open until a garbage collection.
func WatchThen(pid int, started time.Time, reap func() (unix.WaitStatus, error), release func()) (<-chan ExitStatus, error) {
	// Mark it watched before anything else, so the orphan loop leaves it
	// alone from now on (see reapOrphans). The pid is our unreaped child,
	// so it names this process even if it already exited.
	r.mu.Lock()
	r.watched[pid] = true
	r.mu.Unlock()
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		r.unwatch(pid)
		if errors.Is(err, unix.ESRCH) {
			// Already reaped by the orphan loop (its parent thread
			// died before we got here): the status is kept for a
			// registration.
			if release != nil {
				release()
			}
			return RegisterSince(pid, started), nil
		}
		return nil, fmt.Errorf("unable to open pidfd of %d: %w", pid, err)
	}
	ch := RegisterSince(pid, started)
	go r.watch(pid, fd, reap)
	return ch, nil
}

// Hold makes the orphan loop leave alone every zombie for which keep
// reports true; nil ends it. It is for children whose pids are not known
// yet but that another waiter still means to reap: libcontainer's bootstrap
// stages while a start is in flight. Their forking thread may die (a
// goroutine exits locked to it), which makes them children of the main
// thread; reaped here, the start's own wait fails with ECHILD and its
// os.Process keeps a pidfd until a garbage collection. keep runs on the
// main thread and must not block. Call Kick when keep may have turned
// false.
func Hold(keep func(pid int) bool) {
	if keep == nil {
		r.held.Store(nil)
		return
	}
	r.held.Store(&keep)
}

// Kick wakes the orphan loop, which may have left zombies alone (see Hold).
func Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// unwatch ends pid's watch and wakes the orphan loop, which may have left
// pid's zombie (and the orphans behind it) alone meanwhile.
func (r *reaper) unwatch(pid int) {
	r.mu.Lock()
	delete(r.watched, pid)
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Watched reports whether pid is registered with Watch and not yet reaped.
func Watched(pid int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.watched[pid]
}

func (r *reaper) watch(pid, fd int, reap func() (unix.WaitStatus, error)) {
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	var (
		st  ExitStatus
		got bool
	)
	try := func(opts int) bool {
		if reap != nil {
			opts |= unix.WNOWAIT // see it exit, leave the reaping to reap
		}
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PIDFD, fd, &info, unix.WEXITED|unix.WALL|opts, nil)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			return false
		}
		if err != nil {
			// ECHILD: reaped by the orphan loop (its parent thread
			// died), which delivered the status.
			return true
		}
		s, ok := fromSiginfo(&info)
		if !ok {
			return false
		}
		st, got = s, true
		if reap != nil {
			if ws, err := reap(); err == nil {
				st = FromWaitStatus(pid, ws)
			} else {
				// reap could not: reap here. The status read above
				// with WNOWAIT stands either way; the orphan loop
				// leaves watched pids alone, so nobody else delivers
				// it (dropping it would hang the process's waiters).
				var info unix.Siginfo
				_ = unix.Waitid(unix.P_PIDFD, fd, &info, unix.WEXITED|unix.WALL|unix.WNOHANG, nil)
			}
		}
		return true
	}
	rc, err := f.SyscallConn()
	if err == nil {
		// Read waits for readability (the process exited) through the
		// netpoller whenever try returns false.
		err = rc.Read(func(uintptr) bool { return try(unix.WNOHANG) })
	}
	if err != nil && !got {
		// Not pollable: block in waitid on this goroutine's thread.
		for !try(0) {
		}
	}
	r.unwatch(pid)
	if got {
		r.deliver(st)
	}
}

// fromSiginfo decodes waitid's CLD_* siginfo; ok is false when no child
// changed state (WNOHANG).
func fromSiginfo(info *unix.Siginfo) (ExitStatus, bool) {
	// Linux siginfo: signo, errno, code (int32 each), padding to 8, then
	// for SIGCHLD: pid, uid, status (int32 each).
	b := (*[unsafe.Sizeof(unix.Siginfo{})]byte)(unsafe.Pointer(info))
	pid := int(int32(binary.NativeEndian.Uint32(b[16:])))
	status := int(int32(binary.NativeEndian.Uint32(b[24:])))
	if info.Signo != int32(unix.SIGCHLD) || pid == 0 {
		return ExitStatus{}, false
	}
	switch info.Code {
	case 1: // CLD_EXITED
		return ExitStatus{Pid: pid, Code: status}, true
	case 2, 3: // CLD_KILLED, CLD_DUMPED
		return ExitStatus{Pid: pid, Code: 128 + status, Signal: unix.Signal(status)}, true
	}
	return ExitStatus{}, false
}

// Register returns a channel that receives pid's exit status exactly once,
// when the orphan loop reaps it (or reaped it up to EarlyRetention ago).
// Prefer RegisterSince when the start time is known: a kept status may
// belong to an earlier process that had the same pid.
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

// Unregister forgets a registration made by Register.
func Unregister(pid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.waiters, pid)
}

// Reaped returns how many children this package reaped so far.
func Reaped() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reaped
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

// Command runs cmd to completion and returns its exit status. The returned
// error is about starting cmd; a non-zero status is not an error. The
// command is waited by os/exec (the orphan loop never takes another
// thread's child).
func Command(cmd *exec.Cmd) (ExitStatus, error) {
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		ws, _ := ee.Sys().(syscall.WaitStatus)
		return FromWaitStatus(ee.Pid(), unix.WaitStatus(ws)), nil
	}
	if err != nil {
		return ExitStatus{}, err
	}
	return ExitStatus{Pid: cmd.ProcessState.Pid()}, nil
}
