package sigguard

import (
	"os"
	"os/signal"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestReservedSignalsSelfSent: once HoldSignals ran, signals 32 to 34 have
// nopHandler as their handler (read back with rt_sigaction), and each,
// sent three times to this very process, is taken and ends nothing. That
// each was really delivered is shown by signal 35, sent after it and
// caught with signal.Notify: pending real-time signals are delivered
// lowest number first, so 35 arrives only once the three were taken by
// the handler. Needing no child process, this test also runs as an arm64
// binary under qemu-user (TestArm64HandlerUnderQEMU), the one run of
// reserved_arm64.s on an amd64 machine.
func TestReservedSignalsSelfSent(t *testing.T) {
	pc := nopHandlerPC()
	if pc == 0 && (runtime.GOARCH == "amd64" || runtime.GOARCH == "arm64") {
		t.Fatalf("nopHandlerPC() is 0 on %s, which has an assembly no-op handler", runtime.GOARCH)
	}
	if pc == 0 {
		t.Skipf("no assembly no-op handler on %s (catchReserved only undoes inherited ignores there)", runtime.GOARCH)
	}
	stop := HoldSignals(unix.SIGUSR2)
	defer stop()
	var goAct kernelSigaction
	if err := rtSigaction(int(unix.SIGURG), nil, &goAct); err != nil {
		t.Fatal(err)
	}
	for sig := 32; sig <= 34; sig++ {
		var act kernelSigaction
		if err := rtSigaction(sig, nil, &act); err != nil {
			t.Fatalf("rt_sigaction(%d): %v", sig, err)
		}
		// A Go binary without cgo, as this test, handles 33 itself (the
		// runtime's per-thread syscall signal, as glibc's SIGSETXID):
		// catchReserved leaves a handler that is there alone.
		if act.handler != pc && (sig != 33 || act.handler != goAct.handler) {
			t.Fatalf("signal %d: handler %#x, want nopHandler (%#x)", sig, act.handler, pc)
		}
	}
	marker := make(chan os.Signal, 1)
	signal.Notify(marker, unix.Signal(35))
	defer signal.Stop(marker)
	for sig := 32; sig <= 34; sig++ {
		for range 3 {
			if err := unix.Kill(unix.Getpid(), unix.Signal(sig)); err != nil {
				t.Fatalf("kill %d: %v", sig, err)
			}
		}
		if err := unix.Kill(unix.Getpid(), unix.Signal(35)); err != nil {
			t.Fatal(err)
		}
		select {
		case <-marker:
		case <-time.After(10 * time.Second):
			t.Fatalf("signal 35, sent after signal %d, never arrived", sig)
		}
	}
}
