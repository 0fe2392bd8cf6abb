package virtq

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Layout limits and descriptor flags from the virtio 1.x split-ring spec.
const (
	// MaxQueueSize is the largest ring size the spec allows.
	MaxQueueSize = 32768
	// MaxChainBytes caps the total length of one chain; a chain claiming
	// more is rejected (no virtio-vsock packet comes close).
	MaxChainBytes = 1 << 24

	descSize = 16

	// DescFNext marks a descriptor whose Next field continues the chain.
	DescFNext = 1
	// DescFWrite marks a device-writable descriptor.
	DescFWrite = 2
	// DescFIndirect marks a descriptor pointing at an indirect table.
	DescFIndirect = 4

	// availFNoInterrupt is set by the driver when it does not want a
	// used-buffer notification.
	availFNoInterrupt = 1
)

// Addrs are the guest locations of a split ring, already translated.
type Addrs struct {
	Desc, Avail, Used []byte
}

// RingBytes returns the sizes of the descriptor table, available ring and
// used ring for a queue of size n (without EVENT_IDX trailers, which this
// package never touches).
func RingBytes(n uint16) (desc, avail, used uint64) {
	return uint64(n) * descSize, 4 + 2*uint64(n), 4 + 8*uint64(n)
}

// Queue is the device side of one split virtqueue. It is not safe for
// concurrent use; one goroutine owns a queue at a time.
type Queue struct {
	mem       *Memory
	size      uint16
	desc      []byte
	avail     []byte
	used      []byte
	lastAvail uint16
	usedIdx   uint16
}

// Chain is one descriptor chain popped from the available ring. Readable
// buffers (driver→device) always precede writable ones, as the spec
// requires.
type Chain struct {
	// Head is the descriptor index to return with Push.
	Head uint16
	// Readable are the device-readable buffers in order.
	Readable [][]byte
	// Writable are the device-writable buffers in order.
	Writable [][]byte
}

// ReadableLen is the total length of the readable buffers.
func (c *Chain) ReadableLen() int {
	n := 0
	for _, b := range c.Readable {
		n += len(b)
	}
	return n
}

// WritableLen is the total length of the writable buffers.
func (c *Chain) WritableLen() int {
	n := 0
	for _, b := range c.Writable {
		n += len(b)
	}
	return n
}

// New returns a queue of size n over already translated ring slices.
// lastAvail is the driver-visible position to resume from (vhost-user
// SET_VRING_BASE); the used index is taken from the used ring so that a
// restarted device continues where it stopped.
func New(mem *Memory, n uint16, a Addrs, lastAvail uint16) (*Queue, error) {
	if n == 0 || n&(n-1) != 0 || n > MaxQueueSize {
		return nil, fmt.Errorf("unable to create queue: size %d is not a power of two in 1..%d: %w", n, MaxQueueSize, ErrBadRing)
	}
	d, av, u := RingBytes(n)
	if uint64(len(a.Desc)) < d || uint64(len(a.Avail)) < av || uint64(len(a.Used)) < u {
		return nil, fmt.Errorf("unable to create queue: ring slices too short for size %d: %w", n, ErrBadRing)
	}
	// The spec requires 16-, 2- and 4-byte alignment in guest memory; the
	// host mapping is page aligned so the same holds for host pointers,
	// and the atomic accesses below rely on it.
	if addrOf(a.Desc)%16 != 0 || addrOf(a.Avail)%2 != 0 || addrOf(a.Used)%4 != 0 {
		return nil, fmt.Errorf("unable to create queue: misaligned ring: %w", ErrBadRing)
	}
	q := &Queue{mem: mem, size: n, desc: a.Desc[:d], avail: a.Avail[:av], used: a.Used[:u], lastAvail: lastAvail}
	q.usedIdx = uint16(atomic.LoadUint32(q.usedWord()) >> 16)
	return q, nil
}

func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// usedWord is the 32-bit word holding used.flags (low half) and used.idx
// (high half) on a little-endian host.
func (q *Queue) usedWord() *uint32 { return (*uint32)(ptrTo(q.used)) }

// availIdx loads avail.idx with acquire semantics. The aligned 32-bit word
// containing it is either (flags, idx) or (idx, ring[0]), both inside the
// avail ring.
func (q *Queue) availIdx() uint16 {
	if addrOf(q.avail)%4 == 0 {
		return uint16(atomic.LoadUint32((*uint32)(unsafe.Pointer(&q.avail[0]))) >> 16)
	}
	return uint16(atomic.LoadUint32((*uint32)(unsafe.Pointer(&q.avail[2]))))
}

// Size is the number of descriptors.
func (q *Queue) Size() uint16 { return q.size }

// LastAvail is the index of the next available entry the device will read;
// vhost-user GET_VRING_BASE returns it.
func (q *Queue) LastAvail() uint16 { return q.lastAvail }

// Pending reports whether the driver has published chains not yet popped.
func (q *Queue) Pending() bool { return q.availIdx() != q.lastAvail }

// NeedsNotify reports whether the driver wants a used-buffer notification
// (it did not set VRING_AVAIL_F_NO_INTERRUPT).
func (q *Queue) NeedsNotify() bool {
	var flags uint16
	if addrOf(q.avail)%4 == 0 {
		// The driver writes flags concurrently; read them atomically.
		flags = uint16(atomic.LoadUint32((*uint32)(ptrTo(q.avail))))
	} else {
		flags = binary.LittleEndian.Uint16(q.avail[0:2])
	}
	return flags&availFNoInterrupt == 0
}

// Pop takes the next available chain. ok is false when the ring is empty.
// A malformed chain is consumed and returned together with an error so the
// caller can Push it back with length 0 instead of stalling the ring.
func (q *Queue) Pop() (c *Chain, ok bool, err error) {
	avail := q.availIdx()
	if avail == q.lastAvail {
		return nil, false, nil
	}
	if uint16(avail-q.lastAvail) > q.size {
		return nil, false, fmt.Errorf("unable to pop: driver published %d entries on a ring of %d: %w", uint16(avail-q.lastAvail), q.size, ErrBadRing)
	}
	slot := 4 + 2*uint64(q.lastAvail%q.size)
	head := binary.LittleEndian.Uint16(q.avail[slot : slot+2])
	q.lastAvail++
	c = &Chain{Head: head}
	if head >= q.size {
		return c, true, fmt.Errorf("unable to pop: head %d outside ring of %d: %w", head, q.size, ErrBadChain)
	}
	if err := q.walk(c, q.desc, uint32(q.size), head, false); err != nil {
		c.Readable, c.Writable = nil, nil
		return c, true, err
	}
	return c, true, nil
}

// walk follows a chain in table (the ring's table or an indirect one).
func (q *Queue) walk(c *Chain, table []byte, n uint32, idx uint16, indirect bool) error {
	var total uint64
	for steps := uint32(0); ; steps++ {
		if steps >= n {
			return fmt.Errorf("unable to walk chain: longer than its table (%d), loop: %w", n, ErrBadChain)
		}
		if uint32(idx) >= n {
			return fmt.Errorf("unable to walk chain: next %d outside table of %d: %w", idx, n, ErrBadChain)
		}
		d := table[uint64(idx)*descSize : uint64(idx+1)*descSize]
		addr := binary.LittleEndian.Uint64(d[0:8])
		length := binary.LittleEndian.Uint32(d[8:12])
		flags := binary.LittleEndian.Uint16(d[12:14])
		next := binary.LittleEndian.Uint16(d[14:16])

		if flags&DescFIndirect != 0 {
			if indirect {
				return fmt.Errorf("unable to walk chain: nested indirect table: %w", ErrBadChain)
			}
			if flags&DescFNext != 0 || steps != 0 {
				return fmt.Errorf("unable to walk chain: indirect descriptor must be alone: %w", ErrBadChain)
			}
			if length == 0 || length%descSize != 0 || length/descSize > MaxQueueSize {
				return fmt.Errorf("unable to walk chain: indirect table length %d: %w", length, ErrBadChain)
			}
			t, err := q.mem.Slice(addr, uint64(length))
			if err != nil {
				return fmt.Errorf("unable to map indirect table: %w", err)
			}
			return q.walk(c, t, length/descSize, 0, true)
		}

		total += uint64(length)
		if total > MaxChainBytes {
			return fmt.Errorf("unable to walk chain: more than %d bytes: %w", MaxChainBytes, ErrBadChain)
		}
		buf, err := q.mem.Slice(addr, uint64(length))
		if err != nil {
			return fmt.Errorf("unable to map descriptor %d: %w", idx, err)
		}
		if flags&DescFWrite != 0 {
			c.Writable = append(c.Writable, buf)
		} else {
			if len(c.Writable) != 0 {
				return fmt.Errorf("unable to walk chain: readable descriptor after writable: %w", ErrBadChain)
			}
			c.Readable = append(c.Readable, buf)
		}
		if flags&DescFNext == 0 {
			return nil
		}
		idx = next
	}
}

// Push returns chain head to the driver with written bytes written into
// its writable buffers. The element is stored before the index; the index
// store is atomic, which orders it after the element for the driver.
func (q *Queue) Push(head uint16, written uint32) {
	slot := 4 + 8*uint64(q.usedIdx%q.size)
	binary.LittleEndian.PutUint32(q.used[slot:slot+4], uint32(head))
	binary.LittleEndian.PutUint32(q.used[slot+4:slot+8], written)
	q.usedIdx++
	w := q.usedWord()
	// The device owns used.flags, so rewriting them with the index is safe.
	flags := atomic.LoadUint32(w) & 0xffff
	atomic.StoreUint32(w, flags|uint32(q.usedIdx)<<16)
}

// Gather copies up to len(dst) bytes from bufs starting at offset off and
// returns the number copied.
func Gather(dst []byte, bufs [][]byte, off int) int {
	n := 0
	for _, b := range bufs {
		if off >= len(b) {
			off -= len(b)
			continue
		}
		n += copy(dst[n:], b[off:])
		off = 0
		if n == len(dst) {
			break
		}
	}
	return n
}

// Scatter copies src into bufs starting at offset off and returns the number
// of bytes copied (less than len(src) if the buffers are too small).
func Scatter(bufs [][]byte, off int, src []byte) int {
	n := 0
	for _, b := range bufs {
		if off >= len(b) {
			off -= len(b)
			continue
		}
		n += copy(b[off:], src[n:])
		off = 0
		if n == len(src) {
			break
		}
	}
	return n
}

func ptrTo(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }
