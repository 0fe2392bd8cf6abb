// Command pid1 runs boot.RunWith as PID 1 of a pid+mount namespace for
// init/boot's tests: it chroots into $KEEL_TEST_ROOT (a fresh tmpfs when
// $KEEL_TEST_TMPFS_ROOT is set, standing in for the initramfs), boots with
// the command line $KEEL_TEST_CMDLINE (unix sockets stand in for vsock
// ports: /sockets/PORT.sock) and waits for a signal. $KEEL_TEST_BLOCKDEV
// (a host block device) is recreated in the isolated /dev under the same
// name.
package main

import (
	"context"
	"fmt"
	"github.com/keelvm/keel/init/reaper"
	"net"
	"os"
	"path/filepath"

	"github.com/keelvm/keel/init/boot"
	"github.com/keelvm/keel/init/shutdown"
	"github.com/keelvm/keel/init/step"
	"github.com/keelvm/keel/init/timeline"
	"golang.org/x/sys/unix"
)

func main() {
	// As keel-agent: the main goroutine reaps orphans (init/reaper).
	_ = reaper.RunMain(guestMain)
	select {} // PID 1 never returns
}

func guestMain() {
	defer shutdown.Guard()
	var extra []step.Step
	if os.Getenv(boot.EnvStage) == "" { // not yet re-executed after switch_root
		extra = prelude()
	}
	cl := os.Getenv("KEEL_TEST_CMDLINE")
	res, err := boot.RunWith(context.Background(), boot.Options{
		Cmdline: &cl, Listen: listen, NoConsoleSetup: true, IsolatedDev: true, ExtraSteps: extra,
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

// prelude makes the mount namespace private and chroots into the test root.
func prelude() []step.Step {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		fail("make / private", err)
	}
	root := os.Getenv("KEEL_TEST_ROOT")
	var extra []step.Step
	if dev := os.Getenv("KEEL_TEST_BLOCKDEV"); dev != "" {
		var st unix.Stat_t
		if err := unix.Stat(dev, &st); err != nil {
			fail("stat "+dev, err)
		}
		extra = append(extra, step.Mknod{Path: filepath.Join("/dev", filepath.Base(dev)), Mode: 0o600, Block: true,
			Major: unix.Major(st.Rdev), Minor: unix.Minor(st.Rdev)})
	}
	if os.Getenv("KEEL_TEST_TMPFS_ROOT") != "" {
		if err := unix.Mount("initramfs", root, "tmpfs", 0, "mode=0755"); err != nil {
			fail("mount tmpfs root", err)
		}
		_ = os.WriteFile(filepath.Join(root, "marker"), []byte("initramfs content"), 0o644)
	}
	if err := unix.Chroot(root); err != nil {
		fail("chroot", err)
	}
	_ = unix.Chdir("/")
	return extra
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
