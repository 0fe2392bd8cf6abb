// Command init is the initramfs /init of rootfs-builder's VM test. It loads
// the kernel modules listed in /etc/vmtest/modules, waits for the number of
// pmem devices in /etc/vmtest/devices, and mounts each read-only with
// dax=always as ext4 or erofs (device numbering follows probe order, not
// QEMU's device order, so the filesystem is discovered). It reports
// whether files are DAX-mapped (STATX_ATTR_DAX); a device that mounts only
// without dax is reported as VMTEST-NODAX. Then it prints the pmem lines of
// /proc/mounts and powers off. Every result is a "VMTEST-..." console line.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if err := run(); err != nil {
		fmt.Printf("VMTEST-ERROR %v\n", err)
	}
	fmt.Println("VMTEST-DONE")
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

func run() error {
	for _, m := range [][3]string{{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"}} {
		os.MkdirAll(m[1], 0o755)
		if err := unix.Mount(m[0], m[1], m[2], 0, ""); err != nil && err != unix.EBUSY {
			return fmt.Errorf("mount %s: %w", m[1], err)
		}
	}
	mods, _ := os.ReadFile("/etc/vmtest/modules")
	for _, p := range strings.Fields(string(mods)) {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && err != unix.EEXIST {
			return fmt.Errorf("finit_module %s: %w", p, err)
		}
	}
	b, err := os.ReadFile("/etc/vmtest/devices")
	if err != nil {
		return err
	}
	var n int
	if _, err := fmt.Sscan(string(b), &n); err != nil {
		return fmt.Errorf("devices: %w", err)
	}
	for i := range n {
		if err := check(fmt.Sprintf("pmem%d", i)); err != nil {
			fmt.Printf("VMTEST-FAIL pmem%d: %v\n", i, err)
		}
	}
	mounts, _ := os.ReadFile("/proc/mounts")
	for _, l := range strings.Split(string(mounts), "\n") {
		if strings.HasPrefix(l, "/dev/pmem") {
			fmt.Printf("VMTEST-PROCMOUNT %s\n", l)
		}
	}
	return nil
}

var fstypes = []string{"ext4", "erofs"}

func check(dev string) error {
	node := "/dev/" + dev
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(node); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear", node)
		}
		time.Sleep(50 * time.Millisecond)
	}
	mnt := filepath.Join("/mnt", dev)
	os.MkdirAll(mnt, 0o755)
	fstype, daxErr := "", error(nil)
	for _, fs := range fstypes {
		if err := unix.Mount(node, mnt, fs, unix.MS_RDONLY, "dax=always"); err == nil {
			fstype = fs
			break
		} else if daxErr == nil || err != unix.EINVAL {
			daxErr = err
		}
	}
	if fstype == "" {
		for _, fs := range fstypes {
			if err := unix.Mount(node, mnt, fs, unix.MS_RDONLY, ""); err == nil {
				fmt.Printf("VMTEST-NODAX %s %s\n", dev, fs)
				return nil
			}
		}
		return fmt.Errorf("no filesystem mounts from %s (dax=always: %v)", node, daxErr)
	}
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, filepath.Join(mnt, "sbin/init"), 0, unix.STATX_BASIC_STATS, &stx); err != nil {
		return fmt.Errorf("statx sbin/init: %w", err)
	}
	dax := stx.Attributes_mask&unix.STATX_ATTR_DAX != 0 && stx.Attributes&unix.STATX_ATTR_DAX != 0
	link, _ := os.Readlink(filepath.Join(mnt, "init"))
	fmt.Printf("VMTEST-MOUNT %s %s dax=%v init_size=%d init_link=%s mtime=%d\n", dev, fstype, dax, stx.Size, link, stx.Mtime.Sec)
	return nil
}
