// Package virtq implements the device side of a virtio 1.x split virtqueue
// over guest memory that the device can address directly (for vhost-user,
// guest RAM shared by QEMU through memfds and mmapped into this process).
//
// The driver (guest) publishes descriptor chains through the available
// ring; the device walks each chain with Queue.Pop, which validates every
// descriptor (address inside guest memory, length limits, direction, loop
// and indirect-table rules) before handing out host byte slices, and
// returns it with Queue.Push, which writes a used element and then
// publishes the used index with an atomic store so the driver never sees an
// index ahead of its element. EVENT_IDX is not implemented, so callers must
// not advertise VIRTIO_RING_F_EVENT_IDX.
package virtq

import (
	"errors"
	"fmt"
)

// Sentinel errors for malformed guest input. Callers test with errors.Is.
var (
	// ErrBadAddress means a guest address range is not backed by memory.
	ErrBadAddress = errors.New("guest address out of range")
	// ErrBadChain means a descriptor chain breaks a virtio rule (loop,
	// bad index, wrong direction, bad indirect table, too long).
	ErrBadChain = errors.New("malformed descriptor chain")
	// ErrBadRing means the ring layout itself is invalid.
	ErrBadRing = errors.New("invalid virtqueue layout")
)

// Region is one contiguous piece of guest memory mapped into this process.
type Region struct {
	// GuestAddr is the guest-physical address of Data[0].
	GuestAddr uint64
	// UserAddr is the address of Data[0] in the front-end (QEMU) process;
	// vhost-user ring addresses are given in this address space.
	UserAddr uint64
	// Data is the host view of the region.
	Data []byte
}

// Memory translates guest addresses to host byte slices with bounds checks.
// It is immutable once built and safe for concurrent use.
type Memory struct {
	regions []Region
}

// NewMemory builds a Memory from regions. Overlapping guest ranges are
// rejected because translation would become ambiguous.
func NewMemory(regions ...Region) (*Memory, error) {
	for i, r := range regions {
		if len(r.Data) == 0 {
			return nil, fmt.Errorf("unable to add region %d: empty: %w", i, ErrBadAddress)
		}
		end := r.GuestAddr + uint64(len(r.Data))
		if end < r.GuestAddr {
			return nil, fmt.Errorf("unable to add region %d: guest range wraps: %w", i, ErrBadAddress)
		}
		for j := range i {
			o := regions[j]
			if r.GuestAddr < o.GuestAddr+uint64(len(o.Data)) && o.GuestAddr < end {
				return nil, fmt.Errorf("unable to add region %d: overlaps region %d: %w", i, j, ErrBadAddress)
			}
		}
	}
	return &Memory{regions: append([]Region(nil), regions...)}, nil
}

// Regions returns a copy of the region list.
func (m *Memory) Regions() []Region { return append([]Region(nil), m.regions...) }

// Slice returns the host slice for guest-physical [gpa, gpa+n). The range
// must lie inside a single region. A zero-length range is valid if gpa is
// inside (or at the end of) a region.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	for _, r := range m.regions {
		if s, ok := sub(r.Data, r.GuestAddr, gpa, n); ok {
			return s, nil
		}
	}
	return nil, fmt.Errorf("unable to translate guest address %#x+%#x: %w", gpa, n, ErrBadAddress)
}

// UserSlice is Slice for an address in the front-end's address space.
func (m *Memory) UserSlice(uaddr, n uint64) ([]byte, error) {
	for _, r := range m.regions {
		if s, ok := sub(r.Data, r.UserAddr, uaddr, n); ok {
			return s, nil
		}
	}
	return nil, fmt.Errorf("unable to translate user address %#x+%#x: %w", uaddr, n, ErrBadAddress)
}

// sub returns data[addr-base : addr-base+n] when the range fits, written
// so that no intermediate sum can overflow.
func sub(data []byte, base, addr, n uint64) ([]byte, bool) {
	size := uint64(len(data))
	if addr < base {
		return nil, false
	}
	off := addr - base
	if off > size || n > size-off {
		return nil, false
	}
	return data[off : off+n : off+n], true
}
