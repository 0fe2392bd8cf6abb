package virtq

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func newRing(t testing.TB, n uint16) (*DriverMem, *DriverRing, *Queue) {
	t.Helper()
	mem, err := NewDriverMem(0x10000, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewDriverRing(mem, n)
	if err != nil {
		t.Fatal(err)
	}
	q, err := r.DeviceQueue()
	if err != nil {
		t.Fatal(err)
	}
	return mem, r, q
}

func TestPopPushRoundTrip(t *testing.T) {
	_, r, q := newRing(t, 8)
	if q.Pending() {
		t.Fatal("empty ring reports pending")
	}
	if _, ok, err := q.Pop(); ok || err != nil {
		t.Fatalf("Pop on empty ring = %v, %v", ok, err)
	}
	head, wbufs, err := r.AddChain(3, [][]byte{[]byte("hello "), []byte("world")}, []int{4, 7})
	if err != nil {
		t.Fatal(err)
	}
	c, ok, err := q.Pop()
	if !ok || err != nil {
		t.Fatalf("Pop = %v, %v", ok, err)
	}
	if c.Head != head || len(c.Readable) != 2 || len(c.Writable) != 2 {
		t.Fatalf("chain = head %d, %d readable, %d writable", c.Head, len(c.Readable), len(c.Writable))
	}
	got := make([]byte, c.ReadableLen())
	if n := Gather(got, c.Readable, 0); n != 11 || string(got) != "hello world" {
		t.Fatalf("Gather = %d %q", n, got)
	}
	if c.WritableLen() != 11 {
		t.Fatalf("WritableLen = %d", c.WritableLen())
	}
	if n := Scatter(c.Writable, 2, []byte("0123456789")); n != 9 {
		t.Fatalf("Scatter copied %d, want 9 (buffer space after offset 2)", n)
	}
	if string(wbufs[0][2:]) != "01" || string(wbufs[1]) != "2345678" {
		t.Fatalf("writable buffers = %q %q", wbufs[0], wbufs[1])
	}
	q.Push(c.Head, 9)
	used := r.ReapUsed()
	if len(used) != 1 || used[0] != (Used{Head: head, Len: 9}) {
		t.Fatalf("used = %+v", used)
	}
	if q.LastAvail() != 1 {
		t.Fatalf("LastAvail = %d", q.LastAvail())
	}
}

func TestIndexWrapAround(t *testing.T) {
	_, r, q := newRing(t, 4)
	for i := range 70000 { // past the 16-bit index wrap
		if _, _, err := r.AddChainNoAlloc(uint16(i%4), 1); err != nil {
			t.Fatal(err)
		}
		c, ok, err := q.Pop()
		if !ok || err != nil {
			t.Fatalf("iteration %d: Pop = %v, %v", i, ok, err)
		}
		q.Push(c.Head, 0)
		if u := r.ReapUsed(); len(u) != 1 || u[0].Head != uint16(i%4) {
			t.Fatalf("iteration %d: used %+v", i, u)
		}
	}
}

// AddChainNoAlloc publishes a one-descriptor chain over a fixed buffer so
// long-running tests do not exhaust fake memory.
func (r *DriverRing) AddChainNoAlloc(head uint16, n uint32) (uint16, struct{}, error) {
	r.SetDesc(head, Desc{Addr: r.DescGPA, Len: n})
	r.Publish(head)
	return head, struct{}{}, nil
}

func TestIndirect(t *testing.T) {
	mem, r, q := newRing(t, 4)
	tgpa, table, _ := mem.Alloc(3*16, 16)
	bgpa, buf, _ := mem.Alloc(32, 8)
	copy(buf, "abcdefgh")
	put := func(i int, d Desc) {
		b := table[i*16:]
		binary.LittleEndian.PutUint64(b, d.Addr)
		binary.LittleEndian.PutUint32(b[8:], d.Len)
		binary.LittleEndian.PutUint16(b[12:], d.Flags)
		binary.LittleEndian.PutUint16(b[14:], d.Next)
	}
	put(0, Desc{Addr: bgpa, Len: 4, Flags: DescFNext, Next: 1})
	put(1, Desc{Addr: bgpa + 4, Len: 4, Flags: DescFNext, Next: 2})
	put(2, Desc{Addr: bgpa + 8, Len: 24, Flags: DescFWrite})
	r.SetDesc(1, Desc{Addr: tgpa, Len: 48, Flags: DescFIndirect})
	r.Publish(1)
	c, ok, err := q.Pop()
	if !ok || err != nil {
		t.Fatalf("Pop = %v %v", ok, err)
	}
	if c.Head != 1 || c.ReadableLen() != 8 || c.WritableLen() != 24 {
		t.Fatalf("indirect chain: head %d readable %d writable %d", c.Head, c.ReadableLen(), c.WritableLen())
	}
	got := make([]byte, 8)
	Gather(got, c.Readable, 0)
	if !bytes.Equal(got, []byte("abcdefgh")) {
		t.Fatalf("indirect data %q", got)
	}
}

func TestMalformedChains(t *testing.T) {
	mem, _, _ := newRing(t, 4)
	okGPA, _, _ := mem.Alloc(64, 8)
	tgpa, _, _ := mem.Alloc(32, 16)
	end := uint64(0x10000 + 1<<20)
	cases := []struct {
		name  string
		descs map[uint16]Desc
		head  uint16
		want  error
	}{
		{"loop", map[uint16]Desc{0: {okGPA, 1, DescFNext, 1}, 1: {okGPA, 1, DescFNext, 0}}, 0, ErrBadChain},
		{"self loop", map[uint16]Desc{2: {okGPA, 1, DescFNext, 2}}, 2, ErrBadChain},
		{"next out of range", map[uint16]Desc{0: {okGPA, 1, DescFNext, 9}}, 0, ErrBadChain},
		{"head out of range", nil, 7, ErrBadChain},
		{"address below memory", map[uint16]Desc{0: {0x100, 4, 0, 0}}, 0, ErrBadAddress},
		{"address past memory", map[uint16]Desc{0: {end - 2, 4, 0, 0}}, 0, ErrBadAddress},
		{"address wraps", map[uint16]Desc{0: {^uint64(0) - 1, 4, 0, 0}}, 0, ErrBadAddress},
		{"oversize length", map[uint16]Desc{0: {okGPA, MaxChainBytes + 1, 0, 0}}, 0, ErrBadChain},
		{"readable after writable", map[uint16]Desc{0: {okGPA, 4, DescFWrite | DescFNext, 1}, 1: {okGPA, 4, 0, 0}}, 0, ErrBadChain},
		{"indirect with next", map[uint16]Desc{0: {tgpa, 32, DescFIndirect | DescFNext, 1}, 1: {okGPA, 4, 0, 0}}, 0, ErrBadChain},
		{"indirect bad length", map[uint16]Desc{0: {tgpa, 17, DescFIndirect, 0}}, 0, ErrBadChain},
		{"indirect out of memory", map[uint16]Desc{0: {end, 32, DescFIndirect, 0}}, 0, ErrBadAddress},
		{"indirect after direct", map[uint16]Desc{0: {okGPA, 4, DescFNext, 1}, 1: {tgpa, 32, DescFIndirect, 0}}, 0, ErrBadChain},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewDriverRing(mem, 4)
			if err != nil {
				t.Fatal(err)
			}
			q, _ := r.DeviceQueue()
			for i, d := range tc.descs {
				r.SetDesc(i, d)
			}
			r.Publish(tc.head)
			c, ok, err := q.Pop()
			if !ok || !errors.Is(err, tc.want) {
				t.Fatalf("Pop = ok %v err %v, want %v", ok, err, tc.want)
			}
			if c.Head != tc.head || c.Readable != nil || c.Writable != nil {
				t.Fatalf("malformed chain should come back empty with its head: %+v", c)
			}
			// The ring keeps working after the bad chain.
			q.Push(c.Head, 0)
			r.SetDesc(3, Desc{Addr: okGPA, Len: 8})
			r.Publish(3)
			if c, ok, err := q.Pop(); !ok || err != nil || c.Head != 3 {
				t.Fatalf("Pop after bad chain = %+v %v %v", c, ok, err)
			}
		})
	}
}

func TestNestedIndirectRejected(t *testing.T) {
	mem, r, q := newRing(t, 4)
	tgpa, table, _ := mem.Alloc(16, 16)
	binary.LittleEndian.PutUint64(table, tgpa)
	binary.LittleEndian.PutUint32(table[8:], 16)
	binary.LittleEndian.PutUint16(table[12:], DescFIndirect)
	r.SetDesc(0, Desc{Addr: tgpa, Len: 16, Flags: DescFIndirect})
	r.Publish(0)
	if _, _, err := q.Pop(); !errors.Is(err, ErrBadChain) {
		t.Fatalf("nested indirect: err %v", err)
	}
}

// A chain may use every descriptor of the ring exactly once, but not more.
func TestChainLengthLimit(t *testing.T) {
	mem, r, q := newRing(t, 4)
	gpa, _, _ := mem.Alloc(8, 8)
	for i := range uint16(4) {
		r.SetDesc(i, Desc{Addr: gpa, Len: 1, Flags: DescFNext, Next: i + 1})
	}
	r.SetDesc(3, Desc{Addr: gpa, Len: 1})
	r.Publish(0)
	if c, _, err := q.Pop(); err != nil || len(c.Readable) != 4 {
		t.Fatalf("chain of queue size: %v", err)
	}
	r.SetDesc(3, Desc{Addr: gpa, Len: 1, Flags: DescFNext, Next: 0})
	r.Publish(0)
	if _, _, err := q.Pop(); !errors.Is(err, ErrBadChain) {
		t.Fatalf("chain of queue size + 1: %v", err)
	}
}

func TestChainBytesLimit(t *testing.T) {
	mem, err := NewDriverMem(0, MaxChainBytes+4096)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := NewDriverRing(mem, 2)
	q, _ := r.DeviceQueue()
	r.SetDesc(0, Desc{Addr: 4096, Len: MaxChainBytes - 1, Flags: DescFNext, Next: 1})
	r.SetDesc(1, Desc{Addr: 4096, Len: 1})
	r.Publish(0)
	if _, _, err := q.Pop(); err != nil {
		t.Fatalf("chain of exactly MaxChainBytes: %v", err)
	}
	r.SetDesc(1, Desc{Addr: 4096, Len: 2})
	r.Publish(0)
	if _, _, err := q.Pop(); !errors.Is(err, ErrBadChain) {
		t.Fatalf("chain of MaxChainBytes+1: %v", err)
	}
}

func TestDriverOverrunRejected(t *testing.T) {
	_, r, q := newRing(t, 4)
	for range 5 {
		r.Publish(0)
	}
	if _, _, err := q.Pop(); !errors.Is(err, ErrBadRing) {
		t.Fatalf("avail idx 5 ahead on ring of 4: %v", err)
	}
}

func TestNewValidates(t *testing.T) {
	mem, _, _ := newRing(t, 4)
	buf := make([]byte, 4096)
	for _, n := range []uint16{0, 3, 65535} {
		if _, err := New(mem.Mem, n, Addrs{buf, buf, buf}, 0); !errors.Is(err, ErrBadRing) {
			t.Errorf("size %d: %v", n, err)
		}
	}
	if _, err := New(mem.Mem, 256, Addrs{buf[:16], buf, buf}, 0); !errors.Is(err, ErrBadRing) {
		t.Errorf("short desc table: %v", err)
	}
	if _, err := New(mem.Mem, 4, Addrs{buf[8:], buf, buf}, 0); !errors.Is(err, ErrBadRing) {
		t.Errorf("misaligned desc table: %v", err)
	}
	if _, err := New(mem.Mem, 4, Addrs{buf, buf, buf[2:]}, 0); !errors.Is(err, ErrBadRing) {
		t.Errorf("misaligned used ring: %v", err)
	}
}

func TestNeedsNotify(t *testing.T) {
	_, r, q := newRing(t, 4)
	if !q.NeedsNotify() {
		t.Fatal("NeedsNotify false without NO_INTERRUPT")
	}
	r.SetNoInterrupt(true)
	if q.NeedsNotify() {
		t.Fatal("NeedsNotify true with NO_INTERRUPT")
	}
}

func TestResumeFromBase(t *testing.T) {
	_, r, q := newRing(t, 4)
	r.AddChainNoAlloc(0, 1)
	r.AddChainNoAlloc(1, 1)
	c, _, _ := q.Pop()
	q.Push(c.Head, 0)
	// A new device-side queue resuming at LastAvail sees only the second chain.
	q2, err := New(r.mem.Mem, 4, Addrs{r.desc, r.avail, r.used}, q.LastAvail())
	if err != nil {
		t.Fatal(err)
	}
	c, ok, err := q2.Pop()
	if !ok || err != nil || c.Head != 1 {
		t.Fatalf("resumed Pop = %+v %v %v", c, ok, err)
	}
	q2.Push(c.Head, 0)
	if u := r.ReapUsed(); len(u) != 2 || u[1].Head != 1 {
		t.Fatalf("used after resume = %+v", u)
	}
}

func TestMemory(t *testing.T) {
	a := make([]byte, 100)
	b := make([]byte, 100)
	m, err := NewMemory(Region{GuestAddr: 0, UserAddr: 5000, Data: a}, Region{GuestAddr: 1000, UserAddr: 9000, Data: b})
	if err != nil {
		t.Fatal(err)
	}
	if s, err := m.Slice(1000+90, 10); err != nil || &s[0] != &b[90] {
		t.Fatalf("Slice in second region: %v", err)
	}
	if s, err := m.UserSlice(5000, 100); err != nil || len(s) != 100 {
		t.Fatalf("UserSlice whole region: %v", err)
	}
	if _, err := m.Slice(95, 10); !errors.Is(err, ErrBadAddress) {
		t.Fatalf("range crossing region end: %v", err)
	}
	if _, err := m.Slice(500, 1); !errors.Is(err, ErrBadAddress) {
		t.Fatalf("hole: %v", err)
	}
	if _, err := m.UserSlice(0, 1); !errors.Is(err, ErrBadAddress) {
		t.Fatalf("guest address used as user address: %v", err)
	}
	if _, err := NewMemory(Region{GuestAddr: 0, Data: a}, Region{GuestAddr: 50, Data: b}); !errors.Is(err, ErrBadAddress) {
		t.Fatalf("overlap: %v", err)
	}
	if _, err := NewMemory(Region{GuestAddr: ^uint64(0) - 10, Data: a}); !errors.Is(err, ErrBadAddress) {
		t.Fatalf("wrapping region: %v", err)
	}
}

// FuzzPop walks arbitrary descriptor tables and avail entries: it must
// never panic, and every buffer handed out must lie inside guest memory.
func FuzzPop(f *testing.F) {
	seed := make([]byte, 4*16+2)
	binary.LittleEndian.PutUint64(seed, 0x10000+0x800)
	binary.LittleEndian.PutUint32(seed[8:], 16)
	binary.LittleEndian.PutUint16(seed[12:], DescFNext)
	binary.LittleEndian.PutUint16(seed[14:], 1)
	binary.LittleEndian.PutUint64(seed[16:], 0x10000+0x900)
	binary.LittleEndian.PutUint32(seed[24:], 16)
	binary.LittleEndian.PutUint16(seed[28:], DescFWrite)
	f.Add(seed)
	loop := append([]byte(nil), seed...)
	binary.LittleEndian.PutUint16(loop[30:], DescFNext)
	f.Add(loop)
	ind := append([]byte(nil), seed...)
	binary.LittleEndian.PutUint16(ind[12:], DescFIndirect)
	binary.LittleEndian.PutUint64(ind[0:], 0x10000)
	binary.LittleEndian.PutUint32(ind[8:], 64)
	f.Add(ind)
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 4*16+2 {
			return
		}
		mem, err := NewDriverMem(0x10000, 8192)
		if err != nil {
			t.Fatal(err)
		}
		r, _ := NewDriverRing(mem, 4)
		q, _ := r.DeviceQueue()
		copy(r.desc, b[:64])
		// Use the rest of memory as an indirect-table target too.
		copy(mem.data[0x400:], b[64:])
		r.Publish(binary.LittleEndian.Uint16(b[64:66]))
		c, ok, err := q.Pop()
		if !ok {
			t.Fatal("published chain not popped")
		}
		if err != nil {
			return
		}
		for _, buf := range append(c.Readable, c.Writable...) {
			if len(buf) > 0 {
				lo, hi := addrOf(mem.data), addrOf(mem.data)+uintptr(len(mem.data))
				if p := addrOf(buf); p < lo || p+uintptr(len(buf)) > hi {
					t.Fatalf("buffer outside guest memory")
				}
			}
		}
	})
}
