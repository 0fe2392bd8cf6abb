package container

import (
	"bufio"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// RootIsInitramfs reports whether / is the kernel's initial rootfs (ramfs
// or tmpfs that was never switched away from), where pivot_root fails with
// EINVAL and containers need NoPivotRoot.
func RootIsInitramfs() bool {
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return false
	}
	if st.Type != unix.RAMFS_MAGIC && st.Type != unix.TMPFS_MAGIC {
		return false
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts ... - fstype source superopts
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || fields[4] != "/" {
			continue
		}
		sep := -1
		for i, x := range fields {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+2 >= len(fields) {
			continue
		}
		// The initramfs is "rootfs" (fstype or source); a tmpfs mounted
		// over / by a switch_root shows as plain tmpfs.
		if fields[sep+1] == "rootfs" || fields[sep+2] == "rootfs" {
			return true
		}
	}
	return false
}
