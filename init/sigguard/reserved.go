package sigguard

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Dispositions as rt_sigaction reports them.
const (
	sigDFL = 0
	sigIGN = 1
)

// rtSigaction is rt_sigaction(2) on the kernel's struct sigaction.
func rtSigaction(sig int, act, old *kernelSigaction) error {
	_, _, e := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(act)), uintptr(unsafe.Pointer(old)), 8, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// catchReserved gives the signals reserved by C libraries (32 to 34) a
// handler that does nothing, where they have none.
//
// The Go runtime installs no handler for them and os/signal cannot be
// asked to, so they stay SIG_DFL, whose action is to terminate. The kernel
// drops a SIG_DFL signal sent to a pid namespace's init from inside the
// namespace only if the receiving thread does not block it when it is
// sent: a blocked signal is queued, and if another thread of PID 1 has it
// unblocked, complete_signal(), which does not look at SIGNAL_UNKILLABLE,
// turns it into a group exit ("Kernel panic - not syncing: Attempted to
// kill init! exitcode=0x00000022" for signal 34). The Go runtime blocks
// every signal on a thread while it forks or creates a thread, so
// `kill -34 1` from a hook in the agent's pid namespace killed the guest
// now and then (seen under load in TestBootContainerPowerOff). With a
// handler the signal is never fatal, whichever thread takes it.
//
// A handler, never SIG_IGN: execve resets a handler to the default, so
// containers and hooks still start with nothing ignored; an ignored
// disposition inherited from our parent (glibc's posix_spawn hands 32 and
// 33 over ignored) is replaced the same way. A handler a C library
// installed is left alone.
func catchReserved() {
	act, ok := nopAction()
	for sig := 32; sig <= 34; sig++ {
		var old kernelSigaction
		if rtSigaction(sig, nil, &old) != nil || old.handler > sigIGN {
			continue
		}
		if ok {
			_ = rtSigaction(sig, &act, nil)
		} else if old.handler == sigIGN {
			// No no-op handler on this architecture: at least do not
			// pass an ignored disposition on to every container.
			_ = rtSigaction(sig, &kernelSigaction{handler: sigDFL}, nil)
		}
	}
}

// nopAction is the sigaction for nopHandler: the flags and the restorer of
// the Go runtime's own handler for SIGURG (which it always installs), so
// the handler runs on the thread's signal stack (SA_ONSTACK) and returns
// through rt_sigreturn (SA_RESTORER, which amd64 requires), with every
// signal blocked meanwhile.
func nopAction() (kernelSigaction, bool) {
	pc := nopHandlerPC()
	var goAct kernelSigaction
	if pc == 0 || rtSigaction(int(unix.SIGURG), nil, &goAct) != nil || goAct.handler <= sigIGN {
		return kernelSigaction{}, false
	}
	return kernelSigaction{handler: pc, flags: goAct.flags, restorer: goAct.restorer, mask: ^uint64(0)}, true
}
