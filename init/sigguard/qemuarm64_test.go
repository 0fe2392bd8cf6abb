//go:build amd64

package sigguard

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestArm64HandlerUnderQEMU runs the arm64 no-op handler (reserved_arm64.s)
// on this amd64 machine: this package's tests, cross-compiled for arm64,
// run under qemu-user (Debian's qemu-user-static, called directly: no
// binfmt_misc registration needed), where TestReservedSignalsSelfSent
// sends signals 32 to 34 to the arm64 process. Control: the same binary
// dies of signal 34 sent to itself when it has no handler for it, so the
// emulator does deliver the signal with its default action (the test
// would prove nothing otherwise).
//
// Only tests that need no child process run under qemu: the others exec
// this test binary again, which the kernel cannot run without binfmt_misc.
func TestArm64HandlerUnderQEMU(t *testing.T) {
	qemu := lookQEMU(t)
	gobin := lookGo(t)
	// A cold-cache arm64 build of the standard library takes minutes on
	// a loaded machine: use what the test binary's -timeout leaves, less
	// a margin to report a failure before the package timeout panics.
	ctx := context.Background()
	if d, ok := t.Deadline(); ok {
		if m := time.Until(d) / 10; m < 30*time.Second {
			d = d.Add(-m)
		} else {
			d = d.Add(-30 * time.Second)
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d)
		defer cancel()
	}
	bin := filepath.Join(t.TempDir(), "sigguard.arm64.test")
	build := exec.CommandContext(ctx, gobin, "test", "-c", "-o", bin, ".")
	// GOFLAGS cleared: the caller's (say -race) need not suit a
	// CGO_ENABLED=0 arm64 build.
	build.Env = append(os.Environ(), "GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0", "GOFLAGS=")
	start := time.Now()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("cross-compiling the tests for arm64: %v\n%s", err, out)
	}
	t.Logf("arm64 test binary built in %v", time.Since(start).Round(time.Millisecond))

	run := exec.CommandContext(ctx, qemu, bin, "-test.run=^(TestReservedSignalsSelfSent|TestSigpipeAloneLoggedAtDebug)$", "-test.v", "-test.count=1")
	out, err := run.CombinedOutput()
	if err != nil {
		t.Fatalf("arm64 tests under %s: %v\n%s", qemu, err, out)
	}
	for _, want := range []string{"--- PASS: TestReservedSignalsSelfSent", "--- PASS: TestSigpipeAloneLoggedAtDebug"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("arm64 tests under %s: no %q in\n%s", qemu, want, out)
		}
	}

	ctl := exec.CommandContext(ctx, qemu, bin, "-test.run=^$")
	ctl.Env = append(os.Environ(), childEnv+"=selfkill")
	out, err = ctl.CombinedOutput()
	// Dead of a real-time signal, as the unhandled signal 34 kills it:
	// qemu-user passes the target's real-time signals on as host ones
	// (Debian 12's qemu 7.2 makes 34 the host's SIGRTMIN+2, 36, and says
	// nothing as the action dumps no core). A crash of qemu itself would
	// be SIGSEGV, SIGABRT, SIGBUS or such, below 32.
	var exit *exec.ExitError
	if !errors.As(err, &exit) || !exit.Sys().(syscall.WaitStatus).Signaled() {
		t.Fatalf("control: the arm64 binary without a handler for signal 34 was not killed by sending it to itself (%v)\n%s", err, out)
	}
	sig := exit.Sys().(syscall.WaitStatus).Signal()
	if sig < 32 || sig > 64 {
		t.Fatalf("control: the arm64 binary without a handler for signal 34 died of %v, not of a real-time signal: qemu crashed?\n%s", sig, out)
	}
	t.Logf("control: the arm64 binary without a handler for signal 34 died of host signal %d", int(sig))
}

// lookGo finds the go command to cross-compile with: $GO (make test sets
// it), else go in PATH (go test puts its own GOROOT/bin first), else
// $GOROOT/bin/go.
func lookGo(t *testing.T) string {
	t.Helper()
	for _, name := range []string{os.Getenv("GO"), "go"} {
		if name == "" {
			continue
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if root := os.Getenv("GOROOT"); root != "" {
		return filepath.Join(root, "bin", "go")
	}
	t.Fatal("no go command: set GO or put go in PATH")
	return ""
}

// lookQEMU finds qemu-user's aarch64 emulator. Without it the test skips,
// except in CI, which installs it (scripts/apt-packages.txt).
func lookQEMU(t *testing.T) string {
	for _, name := range []string{"qemu-aarch64-static", "qemu-aarch64"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("qemu-aarch64-static not found: scripts/setup-debian.sh installs qemu-user-static")
	}
	t.Skip("qemu-aarch64-static not found (apt-get install qemu-user-static): the arm64 signal handler is not run")
	return ""
}
