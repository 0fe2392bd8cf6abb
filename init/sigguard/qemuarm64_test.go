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
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "sigguard.arm64.test")
	build := exec.CommandContext(ctx, gobin, "test", "-c", "-o", bin, ".")
	build.Env = append(os.Environ(), "GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0")
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
	var exit *exec.ExitError
	if !errors.As(err, &exit) || !exit.Sys().(syscall.WaitStatus).Signaled() {
		t.Fatalf("control: the arm64 binary without a handler for signal 34 was not killed by sending it to itself (%v)\n%s", err, out)
	}
	t.Logf("control: the arm64 binary without a handler died of %v", exit.Sys().(syscall.WaitStatus).Signal())
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
