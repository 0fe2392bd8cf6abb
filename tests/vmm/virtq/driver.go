package virtq

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
)

// DriverMem is a guest-memory stand-in for tests: one region backed by a
// Go byte slice, with a bump allocator for rings and buffers. Together with
// DriverRing it plays the guest driver's role so device code can be tested
// without a VM.
type DriverMem struct {
	Mem  *Memory
	base uint64
	data []byte

	mu   sync.Mutex
	next uint64
}

// NewDriverMem returns size bytes of fake guest memory at guest address
// base (user address base+1<<40, so tests notice if the two are mixed up).
func NewDriverMem(base uint64, size int) (*DriverMem, error) {
	data := make([]byte, size)
	m, err := NewMemory(Region{GuestAddr: base, UserAddr: base + 1<<40, Data: data})
	if err != nil {
		return nil, err
	}
	return &DriverMem{Mem: m, base: base, data: data}, nil
}

// Alloc returns n bytes aligned to align (a power of two) and their guest
// address.
func (d *DriverMem) Alloc(n, align uint64) (uint64, []byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	off := (d.next + align - 1) &^ (align - 1)
	if off+n > uint64(len(d.data)) {
		return 0, nil, fmt.Errorf("unable to allocate %d bytes: fake guest memory exhausted", n)
	}
	d.next = off + n
	return d.base + off, d.data[off : off+n : off+n], nil
}

// UserAddr converts a guest address of this memory to its user address.
func (d *DriverMem) UserAddr(gpa uint64) uint64 { return gpa + 1<<40 }

// Desc is a raw descriptor as a driver writes it.
type Desc struct {
	Addr  uint64
	Len   uint32
	Flags uint16
	Next  uint16
}

// Used is one element reaped from the used ring.
type Used struct {
	Head uint16
	Len  uint32
}

// DriverRing is the driver side of one split ring in DriverMem.
type DriverRing struct {
	mem                    *DriverMem
	size                   uint16
	DescGPA, AvailGPA      uint64
	UsedGPA                uint64
	desc, avail, used      []byte
	availIdx, lastUsedSeen uint16
}

// NewDriverRing lays out a ring of size n in mem.
func NewDriverRing(mem *DriverMem, n uint16) (*DriverRing, error) {
	ds, as, us := RingBytes(n)
	r := &DriverRing{mem: mem, size: n}
	var err error
	if r.DescGPA, r.desc, err = mem.Alloc(ds, 16); err != nil {
		return nil, err
	}
	if r.AvailGPA, r.avail, err = mem.Alloc(as+2, 4); err != nil {
		return nil, err
	}
	if r.UsedGPA, r.used, err = mem.Alloc(us+2, 4); err != nil {
		return nil, err
	}
	return r, nil
}

// DeviceQueue returns a device-side Queue for this ring starting at
// available index 0, as a freshly started device does.
func (r *DriverRing) DeviceQueue() (*Queue, error) {
	return New(r.mem.Mem, r.size, Addrs{Desc: r.desc, Avail: r.avail, Used: r.used}, 0)
}

// SetDesc writes descriptor i verbatim (for malformed-input tests).
func (r *DriverRing) SetDesc(i uint16, d Desc) {
	b := r.desc[uint64(i)*descSize:]
	binary.LittleEndian.PutUint64(b[0:8], d.Addr)
	binary.LittleEndian.PutUint32(b[8:12], d.Len)
	binary.LittleEndian.PutUint16(b[12:14], d.Flags)
	binary.LittleEndian.PutUint16(b[14:16], d.Next)
}

// Publish appends head to the available ring and publishes the new index.
func (r *DriverRing) Publish(head uint16) {
	slot := 4 + 2*uint64(r.availIdx%r.size)
	binary.LittleEndian.PutUint16(r.avail[slot:slot+2], head)
	r.availIdx++
	atomic.StoreUint32((*uint32)(ptrTo(r.avail)), uint32(binary.LittleEndian.Uint16(r.avail[0:2]))|uint32(r.availIdx)<<16)
}

// SetNoInterrupt sets or clears VRING_AVAIL_F_NO_INTERRUPT.
func (r *DriverRing) SetNoInterrupt(on bool) {
	var f uint16
	if on {
		f = availFNoInterrupt
	}
	binary.LittleEndian.PutUint16(r.avail[0:2], f)
}

// AddChain writes a chain starting at descriptor index first: one readable
// buffer per element of readable (copied into fresh guest memory) followed
// by one writable buffer per element of writable (their sizes), and
// publishes it. It returns the head index and the writable buffers.
func (r *DriverRing) AddChain(first uint16, readable [][]byte, writable []int) (uint16, [][]byte, error) {
	total := len(readable) + len(writable)
	if total == 0 || total > int(r.size) {
		return 0, nil, fmt.Errorf("unable to add chain of %d descriptors", total)
	}
	var wbufs [][]byte
	idx := first
	for i := range total {
		var d Desc
		if i < len(readable) {
			gpa, b, err := r.mem.Alloc(uint64(len(readable[i])), 8)
			if err != nil {
				return 0, nil, err
			}
			copy(b, readable[i])
			d = Desc{Addr: gpa, Len: uint32(len(b))}
		} else {
			gpa, b, err := r.mem.Alloc(uint64(writable[i-len(readable)]), 8)
			if err != nil {
				return 0, nil, err
			}
			wbufs = append(wbufs, b)
			d = Desc{Addr: gpa, Len: uint32(len(b)), Flags: DescFWrite}
		}
		next := (idx + 1) % r.size
		if i != total-1 {
			d.Flags |= DescFNext
			d.Next = next
		}
		r.SetDesc(idx, d)
		idx = next
	}
	r.Publish(first)
	return first, wbufs, nil
}

// ReapUsed returns the used elements published since the last call.
func (r *DriverRing) ReapUsed() []Used {
	idx := uint16(atomic.LoadUint32((*uint32)(ptrTo(r.used))) >> 16)
	var out []Used
	for r.lastUsedSeen != idx {
		slot := 4 + 8*uint64(r.lastUsedSeen%r.size)
		out = append(out, Used{
			Head: uint16(binary.LittleEndian.Uint32(r.used[slot : slot+4])),
			Len:  binary.LittleEndian.Uint32(r.used[slot+4 : slot+8]),
		})
		r.lastUsedSeen++
	}
	return out
}
