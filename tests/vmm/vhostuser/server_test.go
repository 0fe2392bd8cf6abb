package vhostuser

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// echoBackend completes every chain on queue 1 with its readable length
// and signals the driver.
type echoBackend struct {
	mu      sync.Mutex
	starts  int
	stops   int
	resets  int
	stop    chan struct{}
	done    chan struct{}
	started chan struct{}
}

func (b *echoBackend) Features() uint64 { return FeatureVersion1 }
func (b *echoBackend) Config() []byte   { return []byte{3, 0, 0, 0, 0, 0, 0, 0} }
func (b *echoBackend) NumQueues() int   { return 2 }

func (b *echoBackend) Start(rings []*Vring) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.starts++
	b.stop, b.done = make(chan struct{}), make(chan struct{})
	go func(stop, done chan struct{}) {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-rings[1].Kick:
			}
			for {
				c, ok, err := rings[1].Queue.Pop()
				if !ok {
					break
				}
				n := 0
				if err == nil {
					n = c.ReadableLen()
				}
				rings[1].Queue.Push(c.Head, uint32(n))
			}
			rings[1].Notify()
		}
	}(b.stop, b.done)
	select {
	case b.started <- struct{}{}:
	default:
	}
	return nil
}

func (b *echoBackend) Stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stop != nil {
		close(b.stop)
		<-b.done
		b.stop = nil
		b.stops++
	}
}

func (b *echoBackend) Reset() {
	b.mu.Lock()
	b.resets++
	b.mu.Unlock()
}

// frontEnd plays QEMU over one end of a socketpair.
type frontEnd struct {
	t  *testing.T
	uc *net.UnixConn
}

func (f *frontEnd) send(req, flags uint32, payload []byte, fds ...int) {
	f.t.Helper()
	h := header{Request: req, Flags: flagVersion | flags, Size: uint32(len(payload))}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := f.uc.WriteMsgUnix(append(h.marshal(), payload...), oob, nil); err != nil {
		f.t.Fatal(err)
	}
}

func (f *frontEnd) recv(req uint32) []byte {
	f.t.Helper()
	f.uc.SetReadDeadline(time.Now().Add(5 * time.Second))
	hb := make([]byte, headerSize)
	if _, err := ioReadFull(f.uc, hb); err != nil {
		f.t.Fatalf("reply to %d: %v", req, err)
	}
	h := header{Request: binary.LittleEndian.Uint32(hb), Flags: binary.LittleEndian.Uint32(hb[4:]), Size: binary.LittleEndian.Uint32(hb[8:])}
	if h.Request != req || h.Flags != flagVersion|flagReply {
		f.t.Fatalf("reply header %+v for request %d", h, req)
	}
	p := make([]byte, h.Size)
	if _, err := ioReadFull(f.uc, p); err != nil {
		f.t.Fatal(err)
	}
	return p
}

func (f *frontEnd) call(req uint32, payload []byte, fds ...int) []byte {
	f.t.Helper()
	f.send(req, 0, payload, fds...)
	return f.recv(req)
}

// ack sends with need_reply and asserts success.
func (f *frontEnd) ack(req uint32, payload []byte, fds ...int) {
	f.t.Helper()
	f.send(req, flagNeedReply, payload, fds...)
	if v := binary.LittleEndian.Uint64(f.recv(req)); v != 0 {
		f.t.Fatalf("request %d acked with %d", req, v)
	}
}

func ioReadFull(c *net.UnixConn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func socketpair(t *testing.T) (server, client *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conv := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "sp")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	server, client = conv(fds[0]), conv(fds[1])
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

func startSession(t *testing.T, b Backend) (*frontEnd, chan error) {
	s, c := socketpair(t)
	done := make(chan error, 1)
	go func() { done <- ServeConn(s, b, nil) }()
	t.Cleanup(func() {
		c.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("session did not end")
		}
	})
	return &frontEnd{t: t, uc: c}, done
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

const (
	memSize  = 1 << 20
	userBase = 0x7f0000000000
	gpaBase  = 0x100000
)

func u32s(vs ...uint32) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint32(b, v)
	}
	return b
}

func TestSessionEndToEnd(t *testing.T) {
	b := &echoBackend{started: make(chan struct{}, 1)}
	s, c := socketpair(t)
	fdsBefore := openFDs(t) // after the runtime's poller fds exist
	done := make(chan error, 1)
	go func() { done <- ServeConn(s, b, nil) }()
	f := &frontEnd{t: t, uc: c}

	if v := binary.LittleEndian.Uint64(f.call(reqGetFeatures, nil)); v != FeatureVersion1|featureProtocolFeatures {
		t.Fatalf("features %#x", v)
	}
	f.send(reqSetFeatures, 0, u64Bytes(FeatureVersion1|featureProtocolFeatures))
	if v := binary.LittleEndian.Uint64(f.call(reqGetProtocolFeatures, nil)); v != supportedProtocolFeatures {
		t.Fatalf("protocol features %#x", v)
	}
	f.send(reqSetProtocolFeatures, 0, u64Bytes(protoReplyAck|protoConfig|protoMQ))
	if v := binary.LittleEndian.Uint64(f.call(reqGetQueueNum, nil)); v != 2 {
		t.Fatalf("queue num %d", v)
	}
	cfg := f.call(reqGetConfig, append(u32s(0, 8, 0), make([]byte, 8)...))
	if len(cfg) != 20 || binary.LittleEndian.Uint64(cfg[12:]) != 3 {
		t.Fatalf("config reply %v", cfg)
	}
	f.ack(reqSetOwner, nil)

	// Guest memory: a memfd we also map here to play the driver.
	mfd, err := unix.MemfdCreate("guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(mfd)
	if err := unix.Ftruncate(mfd, memSize+4096); err != nil {
		t.Fatal(err)
	}
	guest, err := unix.Mmap(mfd, 0, memSize+4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(guest)
	ram := guest[4096:] // mmap_offset 4096
	table := binary.LittleEndian.AppendUint32(nil, 1)
	table = binary.LittleEndian.AppendUint32(table, 0)
	for _, v := range []uint64{gpaBase, memSize, userBase, 4096} {
		table = binary.LittleEndian.AppendUint64(table, v)
	}
	f.ack(reqSetMemTable, table, mfd)

	for i := range 2 {
		base := uint64(i) * 0x10000
		f.ack(reqSetVringNum, u32s(uint32(i), 8))
		addr := u32s(uint32(i), 0)
		for _, v := range []uint64{userBase + base, userBase + base + 0x2000, userBase + base + 0x1000, 0} {
			addr = binary.LittleEndian.AppendUint64(addr, v)
		}
		f.ack(reqSetVringAddr, addr)
		f.ack(reqSetVringBase, u32s(uint32(i), 0))
		call, _ := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		kick, _ := unix.Eventfd(0, unix.EFD_CLOEXEC)
		f.ack(reqSetVringCall, u64Bytes(uint64(i)), call)
		if i == 1 {
			defer unix.Close(kick)
			defer unix.Close(call)
			f.ack(reqSetVringKick, u64Bytes(uint64(i)), kick)
			select {
			case <-b.started:
			case <-time.After(5 * time.Second):
				t.Fatal("back-end not started after the last kick fd")
			}
			// Driver: one 100-byte readable descriptor on queue 1.
			desc := ram[0x10000:]
			binary.LittleEndian.PutUint64(desc, gpaBase+0x30000)
			binary.LittleEndian.PutUint32(desc[8:], 100)
			avail := ram[0x10000+0x1000:]
			binary.LittleEndian.PutUint16(avail[4:], 0)
			binary.LittleEndian.PutUint16(avail[2:], 1)
			unix.Write(kick, u64Bytes(1))
			deadline := time.Now().Add(5 * time.Second)
			var v [8]byte
			for {
				if _, err := unix.Read(call, v[:]); err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("no call notification")
				}
				time.Sleep(time.Millisecond)
			}
			used := ram[0x10000+0x2000:]
			if idx, l := binary.LittleEndian.Uint16(used[2:]), binary.LittleEndian.Uint32(used[8:]); idx != 1 || l != 100 {
				t.Fatalf("used idx %d len %d", idx, l)
			}
		} else {
			defer unix.Close(kick)
			defer unix.Close(call)
			f.ack(reqSetVringKick, u64Bytes(uint64(i)), kick)
		}
	}
	// A new memory table while running restarts the back-end.
	f.ack(reqSetMemTable, table, mfd)
	select {
	case <-b.started:
	case <-time.After(5 * time.Second):
		t.Fatal("back-end not restarted after SET_MEM_TABLE")
	}
	// Stopping returns where the ring stopped and resets the device.
	if st := f.call(reqGetVringBase, u32s(1, 0)); binary.LittleEndian.Uint32(st[4:]) != 1 {
		t.Fatalf("vring base %v", st)
	}
	b.mu.Lock()
	if b.starts != 2 || b.stops != 2 || b.resets != 1 {
		t.Errorf("starts %d stops %d resets %d", b.starts, b.stops, b.resets)
	}
	b.mu.Unlock()
	c.Close()
	if err := <-done; err != nil {
		t.Fatalf("session ended with %v", err)
	}
	// Everything the session received is released; what remains is our
	// own memfd and eventfds (closed by the defers), not their copies,
	// minus the closed client end.
	if after := openFDs(t); after != fdsBefore+5-1 {
		t.Fatalf("fds before %d after %d", fdsBefore, after)
	}
}

func TestProtocolErrorsEndSession(t *testing.T) {
	mfd, err := unix.MemfdCreate("guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(mfd)
	unix.Ftruncate(mfd, 4096)
	table := func(n uint32, size, off uint64) []byte {
		b := u32s(n, 0)
		for range n {
			for _, v := range []uint64{0, size, userBase, off} {
				b = binary.LittleEndian.AppendUint64(b, v)
			}
		}
		return b
	}
	cases := []struct {
		name  string
		send  func(f *frontEnd)
		fdsIn bool
	}{
		{"bad version", func(f *frontEnd) {
			f.uc.Write((header{Request: reqGetFeatures, Flags: 2}).marshal())
		}, false},
		{"oversize payload", func(f *frontEnd) {
			f.uc.Write((header{Request: reqSetFeatures, Flags: flagVersion, Size: MaxPayload + 1}).marshal())
		}, false},
		{"unknown request", func(f *frontEnd) { f.send(99, 0, nil) }, false},
		{"vring index out of range", func(f *frontEnd) { f.send(reqSetVringNum, 0, u32s(7, 8)) }, false},
		{"vring size not power of two", func(f *frontEnd) { f.send(reqSetVringNum, 0, u32s(0, 6)) }, false},
		{"short payload", func(f *frontEnd) { f.send(reqSetVringAddr, 0, u32s(0)) }, false},
		{"mem table fd mismatch", func(f *frontEnd) { f.send(reqSetMemTable, 0, table(2, 4096, 0), mfd) }, true},
		{"mem table too many regions", func(f *frontEnd) { f.send(reqSetMemTable, 0, table(MaxMemRegions+1, 4096, 0)) }, false},
		{"mem table overflow", func(f *frontEnd) { f.send(reqSetMemTable, 0, table(1, ^uint64(0)-10, 4096), mfd) }, true},
		{"kick without fd", func(f *frontEnd) { f.send(reqSetVringKick, 0, u64Bytes(vringFDInvalid)) }, false},
		{"features not offered", func(f *frontEnd) { f.send(reqSetFeatures, 0, u64Bytes(1<<40)) }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := openFDs(t)
			f, done := startSession(t, &echoBackend{})
			tc.send(f)
			select {
			case err := <-done:
				if !errors.Is(err, ErrProtocol) {
					t.Fatalf("session ended with %v, want ErrProtocol", err)
				}
				done <- err // for the cleanup
			case <-time.After(5 * time.Second):
				t.Fatal("session survived a protocol error")
			}
			// Socketpair fds are still open until cleanup; nothing else may leak.
			if after := openFDs(t); after > before+2 {
				t.Fatalf("fds leaked: before %d after %d", before, after)
			}
		})
	}
}

func TestListenClose(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vu.sock")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(path, &echoBackend{}, nil); err == nil {
		t.Fatal("Listen replaced a regular file")
	}
	os.Remove(path)
	s, err := Listen(path, &echoBackend{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// GET_FEATURES round trip over the real listener.
	c.Write((header{Request: reqGetFeatures, Flags: flagVersion}).marshal())
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	reply := make([]byte, headerSize+8)
	if _, err := ioReadFull(c.(*net.UnixConn), reply); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
}

// FuzzServeConn feeds arbitrary bytes to a session as the front-end: the
// session must end (or keep waiting for more) without panicking, and end
// once the front-end hangs up.
func FuzzServeConn(f *testing.F) {
	f.Add((header{Request: reqGetFeatures, Flags: flagVersion}).marshal())
	f.Add(append((header{Request: reqSetVringNum, Flags: flagVersion, Size: 8}).marshal(), u32s(0, 256)...))
	f.Add(append((header{Request: reqGetConfig, Flags: flagVersion, Size: 12}).marshal(), u32s(4, 300, 0)...))
	f.Add(append((header{Request: reqSetMemTable, Flags: flagVersion | flagNeedReply, Size: 40}).marshal(), make([]byte, 40)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, c := socketpair(t)
		done := make(chan error, 1)
		go func() { done <- ServeConn(s, &echoBackend{}, nil) }()
		c.Write(b)
		c.CloseWrite()
		go func() { // drain replies
			buf := make([]byte, 4096)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
			}
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("session did not end after the front-end hung up")
		}
	})
}
