package container

import (
	"bufio"
	"io"
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
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	return rootIsInitramfs(int64(st.Type), f)
}

// rootIsInitramfs decides from /'s statfs magic and mountinfo: the
// initramfs is a ramfs/tmpfs whose "/" entry is named "rootfs" (fstype or
// source); a tmpfs mounted over / by switch_root is plain "tmpfs".
func rootIsInitramfs(magic int64, mountinfo io.Reader) bool {
	if magic != unix.RAMFS_MAGIC && magic != unix.TMPFS_MAGIC {
		return false
	}
	sc := bufio.NewScanner(mountinfo)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts [optional...] - fstype source superopts
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
		if fields[sep+1] == "rootfs" || fields[sep+2] == "rootfs" {
			return true
		}
	}
	return false
}
