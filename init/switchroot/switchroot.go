// Package switchroot moves PID 1 from the initramfs onto a real root
// filesystem (agent.rootfs= or root=, e.g. /dev/pmem0 or /dev/vda).
//
// Why: the initramfs is the kernel's rootfs mount, which can never be
// pivot_root(2)ed away, so libcontainer's pivot_root fails with EINVAL on
// it. After Switch the agent runs on an ordinary mount and containers can
// pivot_root.
//
// Sequence (like busybox switch_root): wait for the device (bounded by
// agent.hotplug_timeout), mount it read-only on /newroot — with
// dax=always when /sys/class/block/DEV/queue/dax is 1 (virtio-pmem,
// nvdimm) — checking the init to re-exec exists there; move /dev, /proc,
// /sys and /run onto it; delete the initramfs contents without crossing
// into other filesystems (the memory is otherwise lost); mount --move the
// new root onto /; chroot; then the caller re-execs the agent inside the
// new root, keeping PID 1.
//
// Without a root device the agent stays on the initramfs (the copy-free
// choice): RootIsInitramfs reports it, and the container runtime then uses
// libcontainer's NoPivotRoot.
package switchroot

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// NewRoot is where the root device is mounted before the switch.
const NewRoot = "/newroot"

// Moved are the mounts carried over to the new root (their submounts,
// e.g. /dev/pts and /sys/fs/cgroup, move with them). The new root needs
// these directories; a mount that cannot move is detached.
var Moved = []string{"/dev", "/proc", "/sys", "/run", "/tmp"}

// ProbeOrder is tried when rootfstype= is not given.
var ProbeOrder = []string{"ext4", "erofs"}

// RootIsInitramfs reports whether / is the kernel's initial rootfs
// (initramfs, ramfs- or tmpfs-backed), where pivot_root fails.
func RootIsInitramfs() bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err == nil {
		if t := RootFSType(string(b)); t != "" {
			return t == "rootfs"
		}
	}
	var st unix.Statfs_t
	return unix.Statfs("/", &st) == nil && st.Type == unix.RAMFS_MAGIC
}

// IsRoot reports whether the block device dev is already mounted on /
// (the kernel mounted root= itself, without an initramfs).
func IsRoot(dev string) bool {
	var d, r unix.Stat_t
	if unix.Stat(dev, &d) != nil || unix.Stat("/", &r) != nil {
		return false
	}
	return d.Mode&unix.S_IFMT == unix.S_IFBLK && d.Rdev == r.Dev
}

// RootFSType returns the filesystem type of the mount on "/" in a
// mountinfo text (the last one wins, as later mounts hide earlier ones).
func RootFSType(mountinfo string) string {
	t := ""
	for _, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || f[4] != "/" {
			continue
		}
		for i := 6; i < len(f)-1; i++ {
			if f[i] == "-" {
				t = f[i+1]
				break
			}
		}
	}
	return t
}

// WaitDevice waits until path exists, polling every 10 ms, up to timeout.
func WaitDevice(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := os.Stat(path)
		if err == nil {
			return nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("root device %s did not appear within %v", path, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// SupportsDAX reports whether the block device supports DAX
// (/sys/class/block/NAME/queue/dax is 1; a partition uses its disk's).
func SupportsDAX(sysfs, dev string) bool {
	link := filepath.Join(sysfs, "class/block", filepath.Base(dev))
	real, err := filepath.EvalSymlinks(link)
	if err != nil {
		return false
	}
	// A disk has queue/; a partition is a directory inside its disk's.
	for _, p := range []string{filepath.Join(real, "queue/dax"), filepath.Join(filepath.Dir(real), "queue/dax")} {
		if b, err := os.ReadFile(p); err == nil {
			return strings.TrimSpace(string(b)) == "1"
		}
	}
	return false
}

// MountData returns the mount data for the root: rootflags plus
// dax=always when the device supports DAX and the filesystem knows the
// option, unless rootflags already says something about dax.
func MountData(fstype, rootflags string, dax bool) string {
	if !dax || strings.Contains(rootflags, "dax") {
		return rootflags
	}
	switch fstype {
	case "ext4", "erofs", "xfs", "ext2":
	default:
		return rootflags
	}
	if rootflags == "" {
		return "dax=always"
	}
	return rootflags + ",dax=always"
}

// Options describe the root to mount.
type Options struct {
	Device  string        // e.g. /dev/pmem0
	FSType  string        // "" = ProbeOrder
	Flags   string        // rootflags=
	RW      bool          // mount read-write
	Timeout time.Duration // for the device to appear
	Sysfs   string        // "" = /sys
	Log     *slog.Logger
}

// MountRoot waits for the device and mounts it on NewRoot. It returns the
// filesystem type and mount data used.
func MountRoot(o Options) (fstype, data string, err error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Sysfs == "" {
		o.Sysfs = "/sys"
	}
	if err := WaitDevice(o.Device, o.Timeout); err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(NewRoot, 0o755); err != nil {
		return "", "", err
	}
	dax := SupportsDAX(o.Sysfs, o.Device)
	types := ProbeOrder
	if o.FSType != "" {
		types = []string{o.FSType}
	}
	flags := uintptr(unix.MS_RDONLY)
	if o.RW {
		flags = 0
	}
	var errs []error
	for _, t := range types {
		data := MountData(t, o.Flags, dax)
		err := unix.Mount(o.Device, NewRoot, t, flags, data)
		if err == nil {
			o.Log.Info("mount root", "cmd", fmt.Sprintf("mount -t %s -o %s %s %s", t, joinOpts(o.RW, data), o.Device, NewRoot), "dax", dax)
			return t, data, nil
		}
		errs = append(errs, fmt.Errorf("mount -t %s -o %s %s: %w", t, joinOpts(o.RW, data), o.Device, err))
	}
	return "", "", fmt.Errorf("unable to mount root device: %w", errors.Join(errs...))
}

func joinOpts(rw bool, data string) string {
	o := "ro"
	if rw {
		o = "rw"
	}
	if data != "" {
		o += "," + data
	}
	return o
}

// FindInit returns the first of candidates that is an executable file
// inside newRoot (candidates are absolute paths inside the new root).
func FindInit(newRoot string, candidates []string) (string, error) {
	for _, c := range candidates {
		if c == "" || !filepath.IsAbs(c) {
			continue
		}
		fi, err := os.Stat(filepath.Join(newRoot, c))
		if err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	return "", fmt.Errorf("no init among %q in %s", candidates, newRoot)
}

// Switch makes newRoot the root: it moves Moved mounts into it, deletes
// the old root's contents (same filesystem only), moves newRoot onto /
// and chroots into it. After Switch the caller execs the new init. Past
// the first move there is no way back, so check FindInit before.
func Switch(newRoot string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var rootSt, newSt unix.Stat_t
	if err := unix.Stat("/", &rootSt); err != nil {
		return err
	}
	if err := unix.Stat(newRoot, &newSt); err != nil {
		return err
	}
	if rootSt.Dev == newSt.Dev {
		return fmt.Errorf("%s is not a mount point", newRoot)
	}
	for _, m := range Moved {
		target := filepath.Join(newRoot, m)
		if err := unix.Mount(m, target, "", unix.MS_MOVE, ""); err != nil {
			// Not mounted (or no directory in the new root): unmount it so
			// nothing is left half-visible.
			log.Warn("mount --move failed, detaching", "src", m, "dst", target, "err", err)
			_ = unix.Unmount(m, unix.MNT_DETACH)
			continue
		}
		log.Debug(fmt.Sprintf("mount --move %s %s", m, target))
	}
	if err := unix.Chdir(newRoot); err != nil {
		return err
	}
	freed := removeTree("/", rootSt.Dev, newRoot)
	log.Info("initramfs contents removed", "files", freed)
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("unable to mount --move %s /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("unable to chroot: %w", err)
	}
	return unix.Chdir("/")
}

// removeTree deletes dir's contents that live on device dev, not
// descending into other filesystems nor into skip. It returns how many
// entries it removed.
func removeTree(dir string, dev uint64, skip string) int {
	f, err := os.Open(dir)
	if err != nil {
		return 0
	}
	names, _ := f.Readdirnames(-1)
	f.Close()
	n := 0
	for _, name := range names {
		p := filepath.Join(dir, name)
		if p == skip {
			continue
		}
		var st unix.Stat_t
		if unix.Lstat(p, &st) != nil || st.Dev != dev {
			continue
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			n += removeTree(p, dev, skip)
			if unix.Rmdir(p) == nil {
				n++
			}
			continue
		}
		if unix.Unlink(p) == nil {
			n++
		}
	}
	return n
}
