// Package devmapper creates and removes device-mapper devices through the
// kernel's ioctl interface (/dev/mapper/control, linux/dm-ioctl.h): what
// the agent needs for one dm-crypt disk, without dmsetup or libdevmapper
// in the guest.
package devmapper

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ControlPath is the device-mapper control node (devtmpfs creates it when
// the kernel has device-mapper).
const ControlPath = "/dev/mapper/control"

// ErrNoDeviceMapper: the kernel has no device-mapper (or the target).
var ErrNoDeviceMapper = errors.New("the kernel has no device-mapper")

// dm-ioctl.h layout.
const (
	headerSize  = 312 // sizeof(struct dm_ioctl)
	specSize    = 40  // sizeof(struct dm_target_spec)
	nameLen     = 128
	maxTypeName = 16

	offVersion     = 0
	offDataSize    = 12
	offDataStart   = 16
	offTargetCount = 20
	offFlags       = 28
	offDev         = 40
	offName        = 48

	// ioctl numbers: _IOWR(0xfd, nr, struct dm_ioctl).
	ioctlBase    = 3<<30 | headerSize<<16 | 0xfd<<8
	cmdVersion   = 0
	cmdDevCreate = 3
	cmdDevRemove = 4
	cmdDevSusp   = 6
	cmdTableLoad = 9

	flagReadOnly   = 1 << 0
	flagSuspend    = 1 << 1
	flagSecureData = 1 << 15 // the kernel wipes its copies of the buffer (keys)
)

// Target is one line of a table: sectors [Start, Start+Length) mapped by
// target Type with Params. Params may hold a key: Create wipes its own
// copy; the caller wipes Params.
type Target struct {
	Start, Length uint64 // 512-byte sectors
	Type          string // "crypt", "linear", ...
	Params        []byte
}

// Device is a created device: its name and block device number.
type Device struct {
	Name         string
	Major, Minor uint32
}

// validName: dm names are at most 127 bytes, no '/'.
func validName(name string) error {
	if name == "" || len(name) >= nameLen || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return fmt.Errorf("device-mapper name %q: want 1-127 bytes without '/'", name)
	}
	return nil
}

// header returns a dm_ioctl buffer of size bytes for name.
func header(name string, size int, flags uint32) []byte {
	b := make([]byte, size)
	le := binary.LittleEndian
	le.PutUint32(b[offVersion:], 4) // 4.0.0: any 4.x kernel
	le.PutUint32(b[offDataSize:], uint32(size))
	le.PutUint32(b[offDataStart:], headerSize)
	le.PutUint32(b[offFlags:], flags)
	copy(b[offName:offName+nameLen-1], name)
	return b
}

func ioctl(fd int, cmd uintptr, b []byte) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), ioctlBase|cmd, uintptr(unsafe.Pointer(&b[0])))
	if errno != 0 {
		return errno
	}
	return nil
}

func openControl() (int, error) {
	fd, err := unix.Open(ControlPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENXIO) {
		return -1, fmt.Errorf("%w (no %s)", ErrNoDeviceMapper, ControlPath)
	}
	if err != nil {
		return -1, fmt.Errorf("unable to open %s: %w", ControlPath, err)
	}
	return fd, nil
}

// Available says why device-mapper cannot be used, or "" when it can.
func Available() string {
	fd, err := openControl()
	if err != nil {
		return err.Error()
	}
	defer unix.Close(fd)
	if err := ioctl(fd, cmdVersion, header("", headerSize, 0)); err != nil {
		return fmt.Sprintf("device-mapper version check: %v", err)
	}
	return ""
}

// Create creates device name, loads table and activates it. The table's
// params (a key) are wiped from the buffers this package built, and the
// kernel is asked to wipe its copies (DM_SECURE_DATA). On failure the
// device is removed again.
func Create(name string, table []Target, readOnly bool) (dev Device, err error) {
	if err := validName(name); err != nil {
		return Device{}, err
	}
	if len(table) == 0 {
		return Device{}, errors.New("device-mapper table: no target")
	}
	fd, err := openControl()
	if err != nil {
		return Device{}, err
	}
	defer unix.Close(fd)

	b := header(name, headerSize, 0)
	if err := ioctl(fd, cmdDevCreate, b); err != nil {
		return Device{}, fmt.Errorf("unable to create device-mapper device %s: %w", name, err)
	}
	devNum := binary.LittleEndian.Uint64(b[offDev:])
	dev = Device{Name: name, Major: unix.Major(devNum), Minor: unix.Minor(devNum)}
	defer func() {
		if err != nil {
			if rerr := remove(fd, name); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
	}()

	load, err := tableBuffer(name, table, readOnly)
	if err != nil {
		return Device{}, err
	}
	err = ioctl(fd, cmdTableLoad, load)
	clear(load)
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			// The target or (dm-crypt) the cipher is not in the kernel, or
			// not loaded: a guest has no modprobe to load it on demand.
			return Device{}, fmt.Errorf("unable to load the table of %s (a target or cipher the kernel lacks?): %w", name, err)
		}
		return Device{}, fmt.Errorf("unable to load the table of %s: %w", name, err)
	}
	// Resume: DM_DEV_SUSPEND without the suspend flag activates the
	// loaded table.
	if err := ioctl(fd, cmdDevSusp, header(name, headerSize, 0)); err != nil {
		return Device{}, fmt.Errorf("unable to activate %s: %w", name, err)
	}
	return dev, nil
}

// tableBuffer lays out a DM_TABLE_LOAD request: the header, then each
// dm_target_spec followed by its NUL-terminated params, 8-byte aligned.
func tableBuffer(name string, table []Target, readOnly bool) ([]byte, error) {
	size := headerSize
	for _, t := range table {
		if t.Type == "" || len(t.Type) >= maxTypeName || bytes.IndexByte(t.Params, 0) >= 0 {
			return nil, fmt.Errorf("device-mapper target %q: bad type or params", t.Type)
		}
		size += align8(specSize + len(t.Params) + 1)
	}
	flags := uint32(flagSecureData)
	if readOnly {
		flags |= flagReadOnly
	}
	b := header(name, size, flags)
	le := binary.LittleEndian
	le.PutUint32(b[offTargetCount:], uint32(len(table)))
	off := headerSize
	for _, t := range table {
		n := align8(specSize + len(t.Params) + 1)
		s := b[off : off+n]
		le.PutUint64(s[0:], t.Start)
		le.PutUint64(s[8:], t.Length)
		le.PutUint32(s[20:], uint32(n)) // next: offset of the next spec from this one
		copy(s[24:24+maxTypeName-1], t.Type)
		copy(s[specSize:], t.Params)
		off += n
	}
	return b, nil
}

func align8(n int) int { return (n + 7) &^ 7 }

// Remove removes device name (it must be unused: unmount first). A busy
// device is retried for up to a second (udev-less guests still see a
// brief open from the kernel's own partition scan).
func Remove(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	fd, err := openControl()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return remove(fd, name)
}

func remove(fd int, name string) error {
	deadline := time.Now().Add(time.Second)
	for {
		err := ioctl(fd, cmdDevRemove, header(name, headerSize, 0))
		if err == nil || errors.Is(err, unix.ENXIO) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("unable to remove device-mapper device %s: %w", name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// SectorsOf returns the size of block device path in 512-byte sectors.
func SectorsOf(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var size uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
		return 0, fmt.Errorf("unable to get the size of %s: %w", path, errno)
	}
	return size / 512, nil
}
