// Package sigguard keeps PID 1 alive whatever signal it is sent.
//
// The kernel protects a pid namespace's init only from signals it has no
// handler for (SIGNAL_UNKILLABLE drops SIG_DFL signals sent from inside the
// namespace). The Go runtime installs a handler for almost every signal and
// then, for a signal nobody asked for with signal.Notify, applies the
// default action itself: a `kill -HUP 1` from a process in the agent's pid
// namespace made Go exit and the guest kernel panic ("Attempted to kill
// init"). Hold asks for every signal whose default action terminates, dumps
// core or stops the process, so the runtime delivers them to a channel
// instead, where they are counted and logged. Signals 32 to 34, which the
// runtime leaves SIG_DFL and cannot deliver to a channel, get a no-op
// handler (catchReserved explains the kernel race that makes SIG_DFL fatal
// to init).
//
// Handlers, never SIG_IGN: an ignored disposition survives execve, so every
// container process (and hook) would start with those signals ignored; a
// handler is reset to the default by execve. The shutdown signals (SIGTERM,
// SIGPWR, SIGINT) are still delivered to init/shutdown's own handler too.
package sigguard

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// logEvery bounds how often held signals are logged (a flood of signals
// must not flood the console).
const logEvery = time.Second

// Held lists the signals Hold catches: every signal whose default action
// ends or stops the process, except SIGKILL and SIGSTOP (which cannot be
// caught, and which the kernel never delivers to init from inside its pid
// namespace) and SIGPROF (the Go runtime consumes it for profiling and
// never dies of it).
func Held() []os.Signal { return append(Fatal(), Realtime()...) }

// Fatal is Held without the real-time signals: those the Go runtime would
// act on itself (exit, core dump, stop) unless someone asked for them.
func Fatal() []os.Signal {
	return []os.Signal{
		unix.SIGHUP, unix.SIGINT, unix.SIGQUIT, unix.SIGILL, unix.SIGTRAP, unix.SIGABRT,
		unix.SIGBUS, unix.SIGFPE, unix.SIGUSR1, unix.SIGSEGV, unix.SIGUSR2, unix.SIGPIPE,
		unix.SIGALRM, unix.SIGTERM, unix.SIGSTKFLT, unix.SIGTSTP, unix.SIGTTIN, unix.SIGTTOU,
		unix.SIGXCPU, unix.SIGXFSZ, unix.SIGVTALRM, unix.SIGIO, unix.SIGPWR, unix.SIGSYS,
	}
}

// Realtime is the rest of Held, signals 35 to 64. PID 1 may hold them
// later than Fatal (init/boot does, after the agent listens: each held
// signal costs a round trip to the runtime's signal-mask thread, ~17 us of
// guest time under TCG for each of 54): until then the runtime itself drops
// them, which TestRealtimeSurvivedBeforeHeld checks.
func Realtime() []os.Signal {
	var sigs []os.Signal
	// Real-time signals terminate a C process by default; Go's runtime
	// already ignores 35 to 64 when nobody asked for them, so holding them
	// only keeps that true whatever the runtime does. 32 to 34 are reserved
	// by C libraries: Go installs no handler for them and cannot be asked
	// to, so HoldSignals gives them a no-op handler of its own
	// (catchReserved: SIG_DFL would let them kill PID 1 in a race).
	for s := 35; s <= 64; s++ {
		sigs = append(sigs, unix.Signal(s))
	}
	return sigs
}

// kernelSigaction is struct sigaction as the rt_sigaction system call takes
// it on 64-bit Linux.
type kernelSigaction struct {
	handler, flags, restorer uintptr
	mask                     uint64
}

// Hold catches every signal of Held until stop is called, logging them
// through slog.Default (at most once per logEvery, with counts).
func Hold() (stop func()) { return HoldSignals(Held()...) }

// HoldSignals is Hold for sigs only (Fatal first, Realtime later).
func HoldSignals(sigs ...os.Signal) (stop func()) {
	catchReserved()
	ch := make(chan os.Signal, 64)
	signal.Notify(ch, sigs...)
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		counts := map[string]int{}
		var last time.Time
		// A timer only while counts wait to be logged: no periodic
		// wake-up for the guest's whole life when no signal comes.
		var flush *time.Timer
		var flushC <-chan time.Time
		for {
			select {
			case s := <-ch:
				counts[s.String()]++
				if wait := logEvery - time.Since(last); wait > 0 {
					if flushC == nil {
						flush = time.NewTimer(wait)
						flushC = flush.C
					}
					continue
				}
			case <-flushC:
				flushC = nil
			case <-quit:
				if flush != nil {
					flush.Stop()
				}
				return
			}
			if flushC != nil {
				flush.Stop()
				flushC = nil
			}
			last = time.Now()
			args := []any{}
			for k, n := range counts {
				args = append(args, k, n)
			}
			level := slog.LevelWarn
			if len(counts) == 1 && counts[unix.SIGPIPE.String()] > 0 {
				// SIGPIPE alone is routine, not an attack: splice(2)
				// into a socket whose peer closed (agent/stdio's attached
				// streams) raises it in the agent itself, and splice has
				// no MSG_NOSIGNAL. It is still caught, so PID 1 survives
				// it, but logged at debug level only.
				level = slog.LevelDebug
			}
			clear(counts)
			slog.Default().Log(context.Background(), level, "signals sent to the agent (caught; only TERM, INT and PWR shut it down)", args...)
		}
	})
	return func() {
		signal.Stop(ch)
		close(quit)
		wg.Wait()
	}
}
