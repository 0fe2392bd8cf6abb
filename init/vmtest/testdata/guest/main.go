// Command guest is /init (or /sbin/init on the root image) for init/vmtest:
// it runs boot.Run exactly as keel-agent does as PID 1, reports the boot
// timeline and the root mount on the console, and powers off when the
// command line has keeltest.poweroff.
package main

import (
	"context"
	"fmt"
	"github.com/keelvm/keel/init/reaper"
	"os"
	"strings"

	"github.com/keelvm/keel/init/boot"
	"github.com/keelvm/keel/init/shutdown"
	"github.com/keelvm/keel/init/timeline"
)

func main() {
	// As keel-agent: the main goroutine reaps orphans (init/reaper).
	_ = reaper.RunMain(guestMain)
	select {} // PID 1 never returns
}

func guestMain() {
	defer shutdown.Guard()
	res, err := boot.Run(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, "KEEL BOOT FAILED:", err)
		_ = shutdown.PowerOff("boot failed")
		select {}
	}
	timeline.Mark("listener_ready")
	res.Logger.Info("listener ready", "timeline", timeline.String())
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == "/" {
			fmt.Fprintln(os.Stderr, "KEEL ROOT", line)
		}
	}
	fmt.Fprintf(os.Stderr, "KEEL READY initramfs=%v %s\n", res.RootIsInitramfs, timeline.String())
	cl, _ := os.ReadFile("/proc/cmdline")
	if strings.Contains(string(cl), "keeltest.poweroff") {
		_ = shutdown.PowerOff("test done")
	}
	select {}
}
