// Package entropy feeds the guest kernel's RNG without ever blocking boot
// on it (Kata runtime#1160: a guest waiting on getrandom(2) stalled
// sandbox start).
//
//   - Seed mixes bytes from the host (agent.entropy on the command line,
//     the ReseedRandomDev RPC) into /dev/urandom with RNDADDENTROPY,
//     crediting 8 bits per byte, so it also unblocks waiters on a kernel
//     whose CRNG is not yet initialised.
//   - FromHWRNG reads up to 64 bytes from /dev/hwrng (virtio-rng) with a
//     deadline and credits them the same way.
//   - Read is getrandom(GRND_NONBLOCK) for the agent's own needs; it
//     returns ErrNotReady instead of waiting.
package entropy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rndAddEntropy is RNDADDENTROPY, _IOW('R', 0x03, int[2]).
const rndAddEntropy = 0x40085203

// MaxSeed bounds one Seed call (the kernel accepts more; the host never
// needs to send more per call).
const MaxSeed = 4096

// HWRNGBytes is how much FromHWRNG reads.
const HWRNGBytes = 64

// ErrNotReady is returned by Read when the kernel RNG is not initialised yet.
var ErrNotReady = errors.New("kernel RNG not initialised yet")

// RandomDev is the device Seed writes to (a variable for tests).
var RandomDev = "/dev/urandom"

// poolInfo builds struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }.
func poolInfo(b []byte) []byte {
	buf := make([]byte, 8+len(b)+3)
	binary.NativeEndian.PutUint32(buf[0:], uint32(len(b)*8))
	binary.NativeEndian.PutUint32(buf[4:], uint32(len(b)))
	copy(buf[8:], b)
	return buf
}

// Seed adds b to the kernel entropy pool and credits it. Crediting needs
// CAP_SYS_ADMIN; without it (host mode) the bytes are still mixed in by a
// plain write and the error says crediting failed.
func Seed(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if len(b) > MaxSeed {
		return fmt.Errorf("entropy seed of %d bytes is larger than %d", len(b), MaxSeed)
	}
	f, err := os.OpenFile(RandomDev, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("unable to open %s: %w", RandomDev, err)
	}
	defer f.Close()
	info := poolInfo(b)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndAddEntropy, uintptr(unsafe.Pointer(&info[0])))
	if errno == 0 {
		return nil
	}
	if _, werr := f.Write(b); werr != nil {
		return fmt.Errorf("unable to seed %s: %w", RandomDev, werr)
	}
	return fmt.Errorf("seed mixed into %s but not credited: %w", RandomDev, errno)
}

// FromHWRNG reads HWRNGBytes from dev (normally /dev/hwrng) within timeout
// and seeds the kernel with them. It returns the number of bytes credited.
// A missing device is not an error (0, nil).
func FromHWRNG(dev string, timeout time.Duration) (int, error) {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("unable to open %s: %w", dev, err)
	}
	defer unix.Close(fd)
	buf := make([]byte, HWRNGBytes)
	n := 0
	deadline := time.Now().Add(timeout)
	for n < len(buf) {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, int(left/time.Millisecond)+1); err != nil && !errors.Is(err, unix.EINTR) {
			break
		}
		m, err := unix.Read(fd, buf[n:])
		if m > 0 {
			n += m
		}
		if err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
			break
		}
		if m == 0 && err == nil {
			break
		}
	}
	if n == 0 {
		return 0, fmt.Errorf("no bytes from %s within %v", dev, timeout)
	}
	return n, Seed(buf[:n])
}

// Read fills b from getrandom(2) without blocking.
func Read(b []byte) error {
	for len(b) > 0 {
		n, err := unix.Getrandom(b, unix.GRND_NONBLOCK)
		if errors.Is(err, unix.EAGAIN) {
			return ErrNotReady
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("getrandom: %w", err)
		}
		b = b[n:]
	}
	return nil
}

// Available returns /proc/sys/kernel/random/entropy_avail (for logs).
func Available() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/entropy_avail")
	if err != nil {
		return "?"
	}
	return string(trimNL(b))
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}
