// Package swap turns on swap the runtime provides (AddSwap, AddSwapPath):
// a hot-plugged virtio-blk disk named by its PCI path, or a file or device
// node already in the guest. The runtime formats it (mkswap) on the host.
package swap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"github.com/keelvm/keel/agent/errdefs"

	"golang.org/x/sys/unix"
)

// Error classes.
var (
	ErrInvalid     = errdefs.New(errdefs.ErrInvalidArgument, "invalid argument")
	ErrNotFound    = errdefs.New(errdefs.ErrNotFound, "not found")
	ErrExists      = errdefs.New(errdefs.ErrAlreadyExists, "already in use")
	ErrUnsupported = errdefs.New(errdefs.ErrFailedPrecondition, "not supported by the guest kernel")
	ErrPermission  = errdefs.New(errdefs.ErrPermissionDenied, "permission denied")
)

// BlockFinder finds the block device of the virtio-blk PCI function at a
// Kata PCI path ("02/00"), waiting for it to appear.
type BlockFinder interface {
	PCIBlock(ctx context.Context, pciPath string) (string, error)
}

// maxSlot is the last device number on a PCI bus.
const maxSlot = 0x1f

// PCIPath renders AddSwapRequest.PCIPath (one device slot per bus level,
// function 0) in Kata's text form, "02/00".
func PCIPath(slots []uint32) (string, error) {
	if len(slots) == 0 {
		return "", fmt.Errorf("PCIPath: empty: %w", ErrInvalid)
	}
	parts := make([]string, len(slots))
	for i, s := range slots {
		if s > maxSlot {
			return "", fmt.Errorf("PCIPath[%d]: slot %d exceeds %d: %w", i, s, maxSlot, ErrInvalid)
		}
		parts[i] = fmt.Sprintf("%02x", s)
	}
	return strings.Join(parts, "/"), nil
}

// On runs swapon(2) on path, a regular file or a block device.
func On(path string) error {
	if path == "" || !filepath.IsAbs(path) || filepath.Clean(path) != path || strings.ContainsRune(path, 0) {
		return fmt.Errorf("%q must be a clean absolute path: %w", path, ErrInvalid)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: %w", path, ErrNotFound)
		}
		return fmt.Errorf("unable to stat %s: %w", path, err)
	}
	isBlock := fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0
	if !fi.Mode().IsRegular() && !isBlock {
		return fmt.Errorf("%s is a %v, not a regular file or block device: %w", path, fi.Mode().Type(), ErrInvalid)
	}
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		return fmt.Errorf("%q: %w", path, ErrInvalid)
	}
	if _, _, errno := unix.Syscall(unix.SYS_SWAPON, uintptr(unsafe.Pointer(p)), 0, 0); errno != 0 {
		switch errno {
		case unix.EINVAL:
			return fmt.Errorf("%s: no swap signature, or holes in the file (format it with mkswap): %v: %w", path, errno, ErrInvalid)
		case unix.EBUSY:
			return fmt.Errorf("%s is already swap: %w", path, ErrExists)
		case unix.ENOSYS:
			return fmt.Errorf("swapon: the guest kernel has no CONFIG_SWAP: %w", ErrUnsupported)
		case unix.EPERM:
			return fmt.Errorf("swapon %s: %v: %w", path, errno, ErrPermission)
		case unix.ENOENT:
			return fmt.Errorf("%s: %v: %w", path, errno, ErrNotFound)
		}
		return fmt.Errorf("unable to swapon %s: %w", path, errno)
	}
	return nil
}
