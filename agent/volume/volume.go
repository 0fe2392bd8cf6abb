// Package volume reports and grows the filesystems of volumes the runtime
// handed the guest (GetVolumeStats, ResizeVolume).
//
// Stats follow kubelet's own volume metrics (pkg/volume/util/fs): capacity
// is f_blocks, available is what an unprivileged writer may still use
// (f_bavail) and used is f_blocks-f_bfree, so used+available may fall short
// of capacity by the root reserve. (Kata's agent reports f_bfree as
// available and capacity-available as used, hiding the reserve.)
//
// Resize grows a mounted ext4 filesystem online with the kernel's
// EXT4_IOC_RESIZE_FS, what resize2fs does for a mounted filesystem, after
// the VMM grew the disk (QMP block_resize; virtio-blk tells the guest the
// new capacity on its own).
package volume

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"github.com/keelvm/keel/agent/errdefs"

	"golang.org/x/sys/unix"
)

// Error classes.
var (
	ErrInvalid     = errdefs.New(errdefs.ErrInvalidArgument, "invalid argument")
	ErrNotFound    = errdefs.New(errdefs.ErrNotFound, "not found")
	ErrUnsupported = errdefs.New(errdefs.ErrUnimplemented, "unsupported")
	ErrState       = errdefs.New(errdefs.ErrFailedPrecondition, "failed precondition")
	ErrPermission  = errdefs.New(errdefs.ErrPermissionDenied, "permission denied")
)

// Usage is one dimension (bytes or inodes) of a filesystem's usage.
type Usage struct {
	Total, Available, Used uint64
}

// Stats returns the byte and inode usage of the filesystem holding path.
func Stats(path string) (bytes, inodes Usage, err error) {
	if err := checkPath(path); err != nil {
		return Usage{}, Usage{}, err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return Usage{}, Usage{}, fmt.Errorf("%s: %v: %w", path, err, ErrNotFound)
		}
		return Usage{}, Usage{}, fmt.Errorf("unable to statfs %s: %w", path, err)
	}
	frsize := uint64(st.Frsize)
	if frsize == 0 {
		frsize = uint64(st.Bsize)
	}
	bytes = Usage{Total: st.Blocks * frsize, Available: st.Bavail * frsize}
	if st.Blocks > st.Bfree {
		bytes.Used = (st.Blocks - st.Bfree) * frsize
	}
	inodes = Usage{Total: st.Files, Available: st.Ffree}
	if st.Files > st.Ffree {
		inodes.Used = st.Files - st.Ffree
	}
	return bytes, inodes, nil
}

func checkPath(path string) error {
	if path == "" || !filepath.IsAbs(path) || filepath.Clean(path) != path || strings.ContainsRune(path, 0) {
		return fmt.Errorf("%q must be a clean absolute path: %w", path, ErrInvalid)
	}
	return nil
}

// ext4Magic is EXT4_SUPER_MAGIC (shared with ext2/3, which the ext4 driver
// also mounts).
const ext4Magic = 0xEF53

// ext4IOCResizeFS is EXT4_IOC_RESIZE_FS, _IOW('f', 16, __u64): grow the
// mounted filesystem to the given number of blocks.
const ext4IOCResizeFS = 0x40086610

// Resize grows the ext4 filesystem mounted at path (a directory or file on
// it, or its block device) to size bytes, rounded down to whole blocks;
// size 0 grows it to fill its device. It returns the filesystem's capacity
// afterwards (statfs, which excludes ext4's metadata overhead).
func Resize(path string, size uint64) (uint64, error) {
	if err := checkPath(path); err != nil {
		return 0, err
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return 0, fmt.Errorf("%s: %v: %w", path, err, ErrNotFound)
		}
		return 0, fmt.Errorf("unable to stat %s: %w", path, err)
	}
	target := path
	dev := st.Dev
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		// The device node itself: resize where it is mounted.
		mp, err := mountPointOf(st.Rdev)
		if err != nil {
			return 0, err
		}
		target, dev = mp, st.Rdev
	}
	fd, err := unix.Open(target, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return 0, fmt.Errorf("unable to open %s: %w", target, err)
	}
	defer unix.Close(fd)
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return 0, fmt.Errorf("unable to statfs %s: %w", target, err)
	}
	if sfs.Type != ext4Magic {
		return 0, fmt.Errorf("%s is on a filesystem of type %#x; only ext4 grows online here: %w", path, sfs.Type, ErrUnsupported)
	}
	bsize := uint64(sfs.Bsize)
	devSize, err := blockDevSize(dev)
	if err != nil {
		return 0, err
	}
	if size == 0 {
		size = devSize
	}
	if size > devSize {
		return 0, fmt.Errorf("size: %d bytes exceed the device's %d bytes (grow the disk first): %w", size, devSize, ErrInvalid)
	}
	blocks := size / bsize
	if blocks < sfs.Blocks {
		return 0, fmt.Errorf("size: %d bytes is below the filesystem's %d bytes; ext4 cannot shrink online: %w", size, sfs.Blocks*bsize, ErrInvalid)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), ext4IOCResizeFS, uintptr(unsafe.Pointer(&blocks))); errno != 0 {
		switch errno {
		case unix.EPERM:
			return 0, fmt.Errorf("%s: the kernel refused the resize (it needs CAP_SYS_RESOURCE): %v: %w", path, errno, ErrPermission)
		case unix.EROFS:
			return 0, fmt.Errorf("%s is mounted read-only: %w", path, ErrState)
		case unix.EINVAL:
			return 0, fmt.Errorf("size: the kernel refused %d blocks of %d bytes (below the current size, or the filesystem lacks resize room): %v: %w", blocks, bsize, errno, ErrInvalid)
		case unix.ENOTTY, unix.EOPNOTSUPP:
			return 0, fmt.Errorf("%s: online resize not supported: %v: %w", path, errno, ErrUnsupported)
		}
		return 0, fmt.Errorf("unable to resize %s to %d blocks: %w", path, blocks, errno)
	}
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return 0, fmt.Errorf("unable to statfs %s: %w", target, err)
	}
	return sfs.Blocks * uint64(sfs.Bsize), nil
}

// blockDevSize reads a block device's size from sysfs (512-byte sectors).
func blockDevSize(dev uint64) (uint64, error) {
	p := fmt.Sprintf("/sys/dev/block/%d:%d/size", unix.Major(dev), unix.Minor(dev))
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("the filesystem is not on a block device (%s): %v: %w", p, err, ErrUnsupported)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("unable to parse %s: %w", p, err)
	}
	return n * 512, nil
}

// mountPointOf finds where device dev is mounted (/proc/self/mountinfo).
func mountPointOf(dev uint64) (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	want := fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev))
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint ...
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && fields[2] == want && fields[3] == "/" {
			return unescapeMountinfo(fields[4]), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", fmt.Errorf("device %s is not mounted: %w", want, ErrState)
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for space, ...).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
