package containertest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
)

// privateMountNSEnv marks the test binary re-run by InPrivateMountNamespace.
const privateMountNSEnv = "KEEL_TEST_PRIVATE_MOUNT_NS"

// InPrivateMountNamespace re-runs the test binary in a mount namespace of
// its own (private propagation, as unshare(1) does) and exits with its
// status; in that child it returns at once. Leak checks (Snapshot) count
// /proc/self/mountinfo, and go test runs packages side by side: in the
// shared namespace they would count the mounts other packages make
// meanwhile. Call it first in TestMain, as root.
func InPrivateMountNamespace() {
	if os.Getenv(privateMountNSEnv) != "" {
		return
	}
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(os.Environ(), privateMountNSEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "containertest: unable to re-run the tests in a private mount namespace:", err)
		os.Exit(1)
	}
	// go test's timeout sends SIGQUIT for a stack dump: pass it on.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGQUIT, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		for s := range sigs {
			_ = cmd.Process.Signal(s)
		}
	}()
	err := cmd.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
		os.Exit(0)
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		os.Exit(ee.ExitCode())
	default:
		fmt.Fprintln(os.Stderr, "containertest: tests in the private mount namespace:", err)
		os.Exit(1)
	}
}
