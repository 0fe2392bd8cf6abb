// Command guestinit is the /init of the qemu package's VM tests. It is
// deliberately tiny: mount /proc, /sys and /dev, act on keeltest.mode= from
// the kernel command line, print markers the host test greps for on the
// serial console, then power off (so QEMU exits 0 thanks to -no-reboot).
//
// Modes: "poweroff" (marker, power off), "sleep" (marker, stay up until the
// host stops the VM), "devices" (load the modules listed in /etc/keeltest/
// modules, wait for /dev/pmem*, print the first line and the sysfs device
// of each pmem and virtio-blk disk).
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if err := run(); err != nil {
		fmt.Printf("KEEL-TEST-ERROR: %v\n", err)
	}
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Printf("KEEL-TEST-ERROR: reboot: %v\n", err)
	}
	// PID 1 must never return.
	for {
		time.Sleep(time.Hour)
	}
}

func run() error {
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, 0, ""); err != nil && err != unix.EBUSY {
			return fmt.Errorf("mount %s: %w", m.dst, err)
		}
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	mode := ""
	for _, f := range strings.Fields(string(cmdline)) {
		if v, ok := strings.CutPrefix(f, "keeltest.mode="); ok {
			mode = v
		}
	}
	fmt.Printf("KEEL-TEST-MARKER mode=%s uptime=%s\n", mode, uptime())
	switch mode {
	case "poweroff":
		return nil
	case "sleep":
		for {
			time.Sleep(time.Hour)
		}
	case "devices":
		return devices()
	}
	return fmt.Errorf("unknown keeltest.mode %q", mode)
}

func uptime() string {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}

func devices() error {
	start := time.Now()
	list, err := os.ReadFile("/etc/keeltest/modules")
	if err != nil {
		return err
	}
	n := 0
	for _, p := range strings.Fields(string(list)) {
		if err := loadModule(p); err != nil {
			return err
		}
		n++
	}
	fmt.Printf("KEEL-TEST-MODULES loaded=%d in %v\n", n, time.Since(start).Round(time.Millisecond))
	want := 0
	if b, err := os.ReadFile("/etc/keeltest/dev-count"); err == nil {
		fmt.Sscan(string(b), &want)
	}
	// Probing is asynchronous for some drivers: wait for the expected
	// number of pmem and virtio-blk disks (or give up and report).
	var devs []string
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		pmems, _ := filepath.Glob("/sys/block/pmem*")
		disks, _ := filepath.Glob("/sys/block/vd*")
		devs = append(pmems, disks...)
		if len(devs) >= want || time.Now().After(deadline) {
			break
		}
	}
	for _, d := range devs {
		name := filepath.Base(d)
		driver, _ := filepath.EvalSymlinks(filepath.Join(d, "device"))
		line, err := firstLine("/dev/" + name)
		if err != nil {
			return err
		}
		fmt.Printf("KEEL-TEST-DEV %s content=%q device=%s\n", name, line, driver)
	}
	fmt.Printf("KEEL-TEST-DEVS-DONE count=%d\n", len(devs))
	return nil
}

func loadModule(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && err != unix.EEXIST {
		return fmt.Errorf("finit_module %s: %w", p, err)
	}
	return nil
}

func firstLine(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	buf := make([]byte, 256)
	n, err := f.Read(buf)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", p, err)
	}
	line, _, _ := bufio.NewReader(bytes.NewReader(buf[:n])).ReadLine()
	return string(line), nil
}
