// Command pid1 runs boot.RunWith as PID 1 of a pid+mount namespace for
// init/boot's tests: it chroots into $KEEL_TEST_ROOT, boots with the
// command line $KEEL_TEST_CMDLINE (unix sockets stand in for vsock ports:
// /sockets/PORT.sock) and waits for a signal.
package main

import (
	"context"
	"fmt"
	"net"
	"os"

	"github.com/keelvm/keel/init/boot"
	"github.com/keelvm/keel/init/shutdown"
	"github.com/keelvm/keel/init/timeline"
	"golang.org/x/sys/unix"
)

func main() {
	defer shutdown.Guard()
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		fail("make / private", err)
	}
	if err := unix.Chroot(os.Getenv("KEEL_TEST_ROOT")); err != nil {
		fail("chroot", err)
	}
	_ = unix.Chdir("/")
	cl := os.Getenv("KEEL_TEST_CMDLINE")
	res, err := boot.RunWith(context.Background(), boot.Options{
		Cmdline: &cl, Listen: listen, NoConsoleSetup: true, IsolatedDev: true,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "BOOT FAILED:", err)
		_ = shutdown.PowerOff("boot failed")
		os.Exit(1)
	}
	shutdown.OnStop("test hook", func(context.Context) error {
		fmt.Fprintln(os.Stderr, "STOP HOOK RAN")
		return nil
	})
	timeline.Mark("listener_ready")
	res.Logger.Info("listener ready", "timeline", timeline.String())
	fmt.Fprintf(os.Stderr, "READY initramfs=%v %s\n", res.RootIsInitramfs, timeline.String())
	if os.Getenv("KEEL_TEST_PANIC") != "" {
		panic("test panic")
	}
	select {}
}

func listen(port uint32) (net.Listener, error) {
	if err := os.MkdirAll("/sockets", 0o755); err != nil {
		return nil, err
	}
	return net.Listen("unix", fmt.Sprintf("/sockets/%d.sock", port))
}

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "BOOT FAILED: %s: %v\n", what, err)
	os.Exit(2)
}
