package vsockdev

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keelvm/keel/tests/vmm/virtq"
)

func TestHostInitiatedStream(t *testing.T) {
	g := newFakeGuest(t)
	c, r, req := g.establishHost(1024, 1<<20)

	// host → guest
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	p := g.recv()
	if p.Op != OpRW || string(p.data) != "ping" || p.SrcPort != req.SrcPort || p.DstPort != 1024 || p.BufAlloc != BufAlloc {
		t.Fatalf("want RW ping, got %v %q", p.Header, p.data)
	}
	// guest → host
	g.send(Header{Op: OpRW, SrcPort: 1024, DstPort: req.SrcPort, BufAlloc: 1 << 20, FwdCnt: 4}, []byte("pong"))
	buf := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := io.ReadFull(r, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("host read %q, %v", buf, err)
	}
	st := g.mux.Stats()
	if st.BytesToGuest != 4 || st.BytesFromGuest != 4 || st.ConnsActive != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestHostInitiatedRefused(t *testing.T) {
	g := newFakeGuest(t)
	c := g.hostConnect(1024)
	req := g.recv()
	if req.Op != OpRequest {
		t.Fatalf("want REQUEST, got %v", req.Header)
	}
	g.send(Header{Op: OpRst, SrcPort: 1024, DstPort: req.SrcPort}, nil)
	c.SetReadDeadline(time.Now().Add(waitTimeout))
	b, err := io.ReadAll(c)
	if err != nil || len(b) != 0 {
		t.Fatalf("refused connection should close without OK: %q %v", b, err)
	}
	g.expectNone(50 * time.Millisecond) // no RST answering an RST
}

func TestBadConnectLine(t *testing.T) {
	g := newFakeGuest(t)
	for _, line := range []string{"HELLO 1\n", "CONNECT x\n", "CONNECT 99999999999\n", "CONNECT " + string(bytes.Repeat([]byte("1"), MaxConnectLine)) + "\n"} {
		c, err := net.Dial("unix", g.uds)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(line))
		c.SetReadDeadline(time.Now().Add(waitTimeout))
		// Closing with the over-long line unread resets instead of EOF.
		if b, err := io.ReadAll(c); (err != nil && !errors.Is(err, syscall.ECONNRESET)) || len(b) != 0 {
			t.Errorf("%q: want close, got %q %v", line, b, err)
		}
		c.Close()
	}
	g.expectNone(50 * time.Millisecond)
}

func TestParseConnect(t *testing.T) {
	for in, want := range map[string]uint32{"CONNECT 0": 0, "CONNECT 1024": 1024, "CONNECT 4294967295": 1<<32 - 1} {
		if got, err := ParseConnect(in); err != nil || got != want {
			t.Errorf("%q = %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "CONNECT", "CONNECT ", "CONNECT -1", "CONNECT 4294967296", "connect 1", "CONNECT 1 2"} {
		if _, err := ParseConnect(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func TestGuestInitiatedStream(t *testing.T) {
	g := newFakeGuest(t)
	ln := g.guestListen(1025)
	g.send(Header{Op: OpRequest, SrcPort: 5000, DstPort: 1025, BufAlloc: 1 << 20}, nil)
	p := g.recv()
	if p.Op != OpResponse || p.SrcPort != 1025 || p.DstPort != 5000 {
		t.Fatalf("want RESPONSE, got %v", p.Header)
	}
	ln.SetDeadline(time.Now().Add(waitTimeout))
	hc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	g.send(Header{Op: OpRW, SrcPort: 5000, DstPort: 1025, BufAlloc: 1 << 20}, []byte("hello host"))
	buf := make([]byte, 10)
	hc.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := io.ReadFull(hc, buf); err != nil || string(buf) != "hello host" {
		t.Fatalf("host read %q %v", buf, err)
	}
	hc.Write([]byte("hello guest"))
	if p := g.recv(); p.Op != OpRW || string(p.data) != "hello guest" {
		t.Fatalf("guest got %v %q", p.Header, p.data)
	}
}

func TestGuestConnectNoListener(t *testing.T) {
	g := newFakeGuest(t)
	g.send(Header{Op: OpRequest, SrcPort: 5000, DstPort: 1099, BufAlloc: 1 << 20}, nil)
	if p := g.recv(); p.Op != OpRst || p.SrcPort != 1099 || p.DstPort != 5000 {
		t.Fatalf("want RST, got %v", p.Header)
	}
	if g.mux.Stats().ConnsActive != 0 {
		t.Fatal("refused connection still tracked")
	}
}

func TestUnknownConnection(t *testing.T) {
	g := newFakeGuest(t)
	for _, op := range []Op{OpRW, OpResponse, OpShutdown, OpCreditUpdate, OpCreditRequest, Op(99)} {
		g.send(Header{Op: op, SrcPort: 7, DstPort: 8}, nil)
		if p := g.recv(); p.Op != OpRst || p.SrcPort != 8 || p.DstPort != 7 {
			t.Fatalf("%v on unknown connection: got %v", op, p.Header)
		}
	}
	g.send(Header{Op: OpRst, SrcPort: 7, DstPort: 8}, nil)
	// Misaddressed packets are dropped, not answered.
	g.send(Header{Op: OpRW, SrcCID: 42, SrcPort: 7, DstPort: 8}, nil)
	g.send(Header{Op: OpRW, DstCID: 7, SrcPort: 7, DstPort: 8}, nil)
	g.expectNone(50 * time.Millisecond)
}

// The guest only gets as many bytes as its buf_alloc allows until it
// returns credit; nothing is lost or reordered.
func TestCreditHostToGuest(t *testing.T) {
	g := newFakeGuest(t)
	const guestBuf = 10000
	c, _, req := g.establishHost(1024, guestBuf)
	want := make([]byte, 100000)
	for i := range want {
		want[i] = byte(i * 7)
	}
	go c.Write(want)
	var got []byte
	for len(got) < guestBuf {
		p := g.recv()
		if p.Op != OpRW {
			t.Fatalf("got %v", p.Header)
		}
		if len(p.data) > rxBufSize {
			t.Fatalf("packet of %d bytes exceeds the rx buffer", len(p.data))
		}
		got = append(got, p.data...)
	}
	if len(got) != guestBuf {
		t.Fatalf("guest got %d bytes with buf_alloc %d", len(got), guestBuf)
	}
	g.expectNone(100 * time.Millisecond)
	for len(got) < len(want) {
		g.send(Header{Op: OpCreditUpdate, SrcPort: 1024, DstPort: req.SrcPort, BufAlloc: guestBuf, FwdCnt: uint32(len(got))}, nil)
		target := min(len(got)+guestBuf, len(want))
		for len(got) < target {
			p := g.recv()
			got = append(got, p.data...)
		}
		if len(got) != target {
			t.Fatalf("overran credit: %d > %d", len(got), target)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatal("stream corrupted or reordered")
	}
}

// A host socket that is not read fills our BufAlloc; the guest must then
// wait for CREDIT_UPDATE, which comes as soon as the host reads. Like Linux's
// transport, the muxer is lazy: it tells the guest only while the guest's
// view of our free buffer is below CreditUpdateThreshold, so once the host
// has drained the guest may hold a view short of the full buffer (the host
// writer can drain in several writes). What the guest is owed: credit back
// to at least the threshold, and every byte of it really accepted.
func TestCreditGuestToHost(t *testing.T) {
	g := newFakeGuest(t)
	ln := g.guestListen(1025)
	// Shrink the socket buffers so the un-read host side backs up quickly.
	g.send(Header{Op: OpRequest, SrcPort: 6000, DstPort: 1025, BufAlloc: 1 << 20}, nil)
	if p := g.recv(); p.Op != OpResponse {
		t.Fatalf("got %v", p.Header)
	}
	hc, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	hc.SetReadBuffer(4096)
	chunk := bytes.Repeat([]byte("x"), MaxPacketPayload)
	sent := 0
	for sent < BufAlloc {
		g.send(Header{Op: OpRW, SrcPort: 6000, DstPort: 1025, BufAlloc: 1 << 20}, chunk)
		sent += len(chunk)
	}
	g.waitTxDrained()
	// Read everything on the host; credit updates follow.
	hc.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := io.ReadFull(hc, make([]byte, sent)); err != nil {
		t.Fatal(err)
	}
	var fwd uint32
	for BufAlloc-(uint32(sent)-fwd) < CreditUpdateThreshold {
		p, ok := g.recvTimeout(waitTimeout)
		if !ok {
			t.Fatalf("guest left with %d bytes of credit after the host read all %d (fwd_cnt %d)", BufAlloc-(uint32(sent)-fwd), sent, fwd)
		}
		if p.Op != OpCreditUpdate {
			t.Fatalf("got %v", p.Header)
		}
		if p.FwdCnt < fwd || p.FwdCnt > uint32(sent) {
			t.Fatalf("fwd_cnt went from %d to %d with %d sent", fwd, p.FwdCnt, sent)
		}
		fwd = p.FwdCnt
	}
	// Spend the credit we were given: all of it must reach the host, no RST.
	credit := int(BufAlloc - (uint32(sent) - fwd))
	more := bytes.Repeat([]byte("y"), credit)
	for off := 0; off < credit; off += MaxPacketPayload {
		end := min(off+MaxPacketPayload, credit)
		g.send(Header{Op: OpRW, SrcPort: 6000, DstPort: 1025, BufAlloc: 1 << 20}, more[off:end])
	}
	got := make([]byte, credit)
	hc.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := io.ReadFull(hc, got); err != nil {
		t.Fatalf("host read of the %d bytes sent on the returned credit: %v", credit, err)
	}
	if !bytes.Equal(got, more) {
		t.Fatal("bytes sent on the returned credit corrupted")
	}
	for {
		p, ok := g.pollRx()
		if !ok {
			break
		}
		if p.Op == OpRst {
			t.Fatalf("guest reset after sending within its credit: %v", p.Header)
		}
	}
}

// Sending beyond the advertised buffer is a protocol violation: RST.
func TestCreditViolationResets(t *testing.T) {
	g := newFakeGuest(t)
	ln := g.guestListen(1025)
	g.send(Header{Op: OpRequest, SrcPort: 6001, DstPort: 1025, BufAlloc: 1 << 20}, nil)
	g.recv()
	hc, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	// Host never reads and the kernel buffers are small, so at most
	// BufAlloc plus the socket buffer can be in flight.
	hc.SetReadBuffer(4096)
	chunk := make([]byte, MaxPacketPayload)
	for range BufAlloc / MaxPacketPayload * 4 {
		g.send(Header{Op: OpRW, SrcPort: 6001, DstPort: 1025, BufAlloc: 1 << 20}, chunk)
		g.waitTxDrained()
		if g.mux.Stats().ConnsActive == 0 {
			break
		}
	}
	for {
		p := g.recv()
		if p.Op == OpRst {
			break
		}
		if p.Op != OpCreditUpdate {
			t.Fatalf("got %v", p.Header)
		}
	}
	if g.mux.Stats().ConnsActive != 0 {
		t.Fatal("connection survived a credit violation")
	}
}

func TestGuestShutdownDrainsThenResets(t *testing.T) {
	g := newFakeGuest(t)
	c, r, req := g.establishHost(1024, 1<<20)
	g.send(Header{Op: OpRW, SrcPort: 1024, DstPort: req.SrcPort, BufAlloc: 1 << 20}, []byte("last words"))
	g.send(Header{Op: OpShutdown, SrcPort: 1024, DstPort: req.SrcPort, BufAlloc: 1 << 20, Flags: ShutdownRcv | ShutdownSend}, nil)
	c.SetReadDeadline(time.Now().Add(waitTimeout))
	b, err := io.ReadAll(r)
	if err != nil || string(b) != "last words" {
		t.Fatalf("host got %q, %v", b, err)
	}
	for {
		p := g.recv()
		if p.Op == OpRst {
			break
		}
		if p.Op != OpCreditUpdate {
			t.Fatalf("got %v", p.Header)
		}
	}
}

func TestHostCloseSendsShutdown(t *testing.T) {
	g := newFakeGuest(t)
	c, r, req := g.establishHost(1024, 1<<20)
	c.Write([]byte("bye"))
	c.CloseWrite()
	if p := g.recv(); p.Op != OpRW || string(p.data) != "bye" {
		t.Fatalf("got %v", p.Header)
	}
	if p := g.recv(); p.Op != OpShutdown || p.Flags != ShutdownSend {
		t.Fatalf("want SHUTDOWN(SEND), got %v", p.Header)
	}
	// Half-closed: the guest can still answer, then closes.
	g.send(Header{Op: OpRW, SrcPort: 1024, DstPort: req.SrcPort, BufAlloc: 1 << 20}, []byte("ack"))
	g.send(Header{Op: OpShutdown, SrcPort: 1024, DstPort: req.SrcPort, BufAlloc: 1 << 20, Flags: ShutdownSend | ShutdownRcv}, nil)
	c.SetReadDeadline(time.Now().Add(waitTimeout))
	if b, err := io.ReadAll(r); err != nil || string(b) != "ack" {
		t.Fatalf("host got %q %v", b, err)
	}
	if p := g.recv(); p.Op != OpRst {
		t.Fatalf("want RST, got %v", p.Header)
	}
}

// A host that never reads cannot hold a guest-closed connection open past
// ShutdownTimeout.
func TestShutdownTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("waits ShutdownTimeout")
	}
	t.Parallel()
	g := newFakeGuest(t)
	ln := g.guestListen(1025)
	g.send(Header{Op: OpRequest, SrcPort: 6002, DstPort: 1025, BufAlloc: 1 << 20}, nil)
	g.recv()
	hc, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	hc.SetReadBuffer(4096)
	// Fill the host socket: send within credit until credit stops coming
	// back, i.e. the device's writer is blocked on the unread socket.
	var sent, fwd uint32
	for {
		for BufAlloc-(sent-fwd) >= MaxPacketPayload {
			g.send(Header{Op: OpRW, SrcPort: 6002, DstPort: 1025, BufAlloc: 1 << 20}, make([]byte, MaxPacketPayload))
			sent += MaxPacketPayload
		}
		p, ok := g.recvTimeout(300 * time.Millisecond)
		if !ok {
			break
		}
		if p.Op != OpCreditUpdate {
			t.Fatalf("got %v", p.Header)
		}
		fwd = p.FwdCnt
	}
	g.send(Header{Op: OpShutdown, SrcPort: 6002, DstPort: 1025, BufAlloc: 1 << 20, Flags: ShutdownSend | ShutdownRcv}, nil)
	start := time.Now()
	p, ok := g.recvTimeout(ShutdownTimeout + 2*time.Second)
	if !ok || p.Op != OpRst {
		t.Fatalf("want RST after timeout, got %v %v", ok, p.Header)
	}
	if el := time.Since(start); el < ShutdownTimeout-100*time.Millisecond {
		t.Fatalf("RST after %v, before ShutdownTimeout", el)
	}
}

func TestPayloadLengthMismatchResets(t *testing.T) {
	g := newFakeGuest(t)
	_, _, req := g.establishHost(1024, 1<<20)
	b := make([]byte, HeaderSize+10)
	h := Header{SrcCID: testGuestCID, DstCID: HostCID, SrcPort: 1024, DstPort: req.SrcPort, Type: TypeStream, Op: OpRW, Len: 500}
	h.Marshal(b)
	g.sendRaw(b)
	if p := g.recv(); p.Op != OpRst {
		t.Fatalf("want RST, got %v", p.Header)
	}
	// Oversize length on a new connection too.
	_, _, req = g.establishHost(1024, 1<<20)
	h = Header{SrcCID: testGuestCID, DstCID: HostCID, SrcPort: 1024, DstPort: req.SrcPort, Type: TypeStream, Op: OpRW, Len: MaxPacketPayload + 1}
	b = make([]byte, HeaderSize+MaxPacketPayload+1)
	h.Marshal(b)
	g.sendRaw(b)
	if p := g.recv(); p.Op != OpRst {
		t.Fatalf("want RST for oversize payload, got %v", p.Header)
	}
}

func TestMalformedTxChains(t *testing.T) {
	g := newFakeGuest(t)
	g.sendRaw(make([]byte, HeaderSize-1)) // too short header
	// Descriptor pointing outside guest memory.
	g.mu.Lock()
	i := g.txFree[0]
	g.txFree = g.txFree[1:]
	g.tx.SetDesc(i, txDesc(0xdead0000000, 64))
	g.tx.Publish(i)
	// Descriptor looping on itself.
	j := g.txFree[0]
	g.txFree = g.txFree[1:]
	d := txDesc(g.txGPA[j], 64)
	d.Flags, d.Next = 1, j
	g.tx.SetDesc(j, d)
	g.tx.Publish(j)
	g.mu.Unlock()
	kick(g.txKick)
	g.waitTxDrained()
	if bad := g.mux.Stats().BadPackets; bad != 3 {
		t.Fatalf("BadPackets = %d, want 3", bad)
	}
	// Still working.
	_, _, _ = g.establishHost(1024, 1<<20)
}

func TestMaxConnections(t *testing.T) {
	g := newFakeGuest(t)
	ln := g.guestListen(1025)
	accepted := make(chan net.Conn, MaxConnections+1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	t.Cleanup(func() {
		for {
			select {
			case c := <-accepted:
				c.Close()
			default:
				return
			}
		}
	})
	responses := 0
	for port := range uint32(MaxConnections + 1) {
		g.send(Header{Op: OpRequest, SrcPort: 10000 + port, DstPort: 1025, BufAlloc: 1 << 20}, nil)
		if port%32 == 31 {
			g.waitTxDrained()
		}
	}
	// Responses come from dialing goroutines, so the refusal may arrive
	// in any position.
	var rsts []uint32
	for range MaxConnections + 1 {
		switch p := g.recv(); p.Op {
		case OpResponse:
			responses++
		case OpRst:
			rsts = append(rsts, p.DstPort)
		default:
			t.Fatalf("got %v", p.Header)
		}
	}
	if responses != MaxConnections || len(rsts) != 1 || rsts[0] != 10000+MaxConnections {
		t.Fatalf("%d responses, RSTs to %v; want %d and one RST to the last", responses, rsts, MaxConnections)
	}
	// A host CONNECT at the limit is closed without OK.
	c := g.hostConnect(1024)
	c.SetReadDeadline(time.Now().Add(waitTimeout))
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("CONNECT at the limit: %q %v", b, err)
	}
	if n := g.mux.Stats().ConnsActive; n != MaxConnections {
		t.Fatalf("active %d", n)
	}
}

func TestPendingRSTLimit(t *testing.T) {
	g := newFakeGuest(t)
	// Stop the worker so RSTs pile up in the muxer.
	g.be.Stop()
	for i := range uint32(MaxPendingRSTs + 10) {
		g.mux.HandleGuest(Header{SrcCID: testGuestCID, DstCID: HostCID, SrcPort: i, DstPort: 1, Type: TypeStream, Op: OpRW}, nil)
	}
	if st := g.mux.Stats(); st.RSTsDropped != 10 {
		t.Fatalf("RSTsDropped = %d, want 10", st.RSTsDropped)
	}
	n := 0
	for {
		if _, _, ok := g.mux.NextPacket(rxBufSize); !ok {
			break
		}
		n++
	}
	if n != MaxPendingRSTs {
		t.Fatalf("queued RSTs = %d, want %d", n, MaxPendingRSTs)
	}
}

func TestStartCloseRemovesSockets(t *testing.T) {
	dir := t.TempDir()
	d, err := Start(t.Context(), Config{VhostUserSocket: dir + "/vhost.sock", UDSPath: dir + "/vsock"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir + "/vhost.sock", dir + "/vsock"} {
		c, err := net.Dial("unix", p)
		if err != nil {
			t.Fatalf("%s not listening after Start: %v", p, err)
		}
		c.Close()
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	noLeftoverSockets(t, dir)
	if _, err := Start(t.Context(), Config{VhostUserSocket: dir + "/a", GuestCID: 2, UDSPath: dir + "/b"}); err == nil {
		t.Fatal("CID 2 accepted")
	}
	// A busy vhost-user path rolls back the hybrid socket already made.
	os.Mkdir(dir+"/busy", 0o755)
	if _, err := Start(t.Context(), Config{VhostUserSocket: dir + "/busy", UDSPath: dir + "/b"}); err == nil {
		t.Fatal("directory accepted as socket path")
	}
	os.Remove(dir + "/busy")
	noLeftoverSockets(t, dir)
	// ctx bounds only the start-up.
	ctx, cancel := context.WithCancel(t.Context())
	d, err = Start(ctx, Config{VhostUserSocket: dir + "/vhost.sock", UDSPath: dir + "/vsock"})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	time.Sleep(20 * time.Millisecond)
	if c, err := net.Dial("unix", dir+"/vsock"); err != nil {
		t.Fatalf("device stopped with its start-up context: %v", err)
	} else {
		c.Close()
	}
	d.Close()
	noLeftoverSockets(t, dir)
	if _, err := Start(ctx, Config{VhostUserSocket: dir + "/vhost.sock", UDSPath: dir + "/vsock"}); err == nil {
		t.Fatal("Start with a cancelled context succeeded")
	}
	noLeftoverSockets(t, dir)
}

func TestHeaderRoundTrip(t *testing.T) {
	h := Header{SrcCID: 3, DstCID: 2, SrcPort: 1, DstPort: 2, Len: 3, Type: 1, Op: OpRW, Flags: 5, BufAlloc: 6, FwdCnt: 7}
	b := make([]byte, HeaderSize)
	h.Marshal(b)
	got, err := ParseHeader(b)
	if err != nil || got != h {
		t.Fatalf("round trip %v %v", got, err)
	}
	if _, err := ParseHeader(b[:HeaderSize-1]); !errors.Is(err, ErrShortHeader) {
		t.Fatalf("short header: %v", err)
	}
	if s := fmt.Sprint(Op(42)); s != "OP(42)" {
		t.Fatal(s)
	}
}

// FuzzHandleGuest feeds arbitrary packets through header parsing and the
// connection state machine: no panic, and every reply is addressed back
// to the guest.
func FuzzHandleGuest(f *testing.F) {
	seed := func(h Header, payload string) []byte {
		b := make([]byte, HeaderSize+len(payload))
		h.Len = uint32(len(payload))
		h.Marshal(b)
		copy(b[HeaderSize:], payload)
		return b
	}
	f.Add(seed(Header{SrcCID: 3, DstCID: 2, SrcPort: 1, DstPort: 1025, Type: 1, Op: OpRequest, BufAlloc: 100}, ""))
	f.Add(seed(Header{SrcCID: 3, DstCID: 2, SrcPort: 1, DstPort: 9, Type: 1, Op: OpRW}, "data"))
	f.Add(seed(Header{SrcCID: 3, DstCID: 2, SrcPort: 1, DstPort: 9, Type: 2, Op: OpShutdown, Flags: 3}, ""))
	f.Add([]byte("short"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m := NewMuxer(3, "/nonexistent/vsock", nil)
		defer m.Close()
		for len(b) > 0 {
			h, err := ParseHeader(b)
			if err != nil {
				return
			}
			b = b[HeaderSize:]
			n := min(int(h.Len), len(b), MaxPacketPayload)
			m.HandleGuest(h, b[:n])
			b = b[n:]
			for {
				rh, data, ok := m.NextPacket(rxBufSize)
				if !ok {
					break
				}
				if rh.DstCID != 3 || rh.SrcCID != HostCID || int(rh.Len) != len(data) {
					t.Fatalf("bad reply %v", rh)
				}
			}
		}
	})
}

func txDesc(addr uint64, n uint32) virtq.Desc { return virtq.Desc{Addr: addr, Len: n} }

// A guest that never answers a REQUEST: after ConnectTimeout the host
// client is closed without "OK" and the guest gets an RST.
func TestConnectTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("waits ConnectTimeout")
	}
	t.Parallel()
	g := newFakeGuest(t)
	c := g.hostConnect(1024)
	req := g.recv()
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(ConnectTimeout + 5*time.Second))
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("want close without OK, got %q %v", b, err)
	}
	if el := time.Since(start); el < ConnectTimeout-100*time.Millisecond {
		t.Fatalf("closed after %v, before ConnectTimeout", el)
	}
	if p := g.recv(); p.Op != OpRst || p.SrcPort != req.SrcPort {
		t.Fatalf("want RST for the abandoned REQUEST, got %v", p.Header)
	}
	// A late RESPONSE is answered with RST, not a connection.
	g.send(Header{Op: OpResponse, SrcPort: 1024, DstPort: req.SrcPort}, nil)
	if p := g.recv(); p.Op != OpRst {
		t.Fatalf("late RESPONSE: got %v", p.Header)
	}
}

// A host client that never sends its CONNECT line is dropped after
// HandshakeTimeout, and the guest never hears of it.
func TestHandshakeTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("waits HandshakeTimeout")
	}
	t.Parallel()
	g := newFakeGuest(t)
	c, err := net.Dial("unix", g.uds)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("CONNECT 10")) // no newline
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(HandshakeTimeout + 5*time.Second))
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("want close, got %q %v", b, err)
	}
	if el := time.Since(start); el < HandshakeTimeout-100*time.Millisecond {
		t.Fatalf("closed after %v, before HandshakeTimeout", el)
	}
	g.expectNone(10 * time.Millisecond)
}

// Local ports for host connections wrap from 2^32-1 back to FirstLocalPort,
// skipping ports still in use.
func TestLocalPortWrap(t *testing.T) {
	g := newFakeGuest(t)
	g.mux.mu.Lock()
	g.mux.nextPort = FirstLocalPort
	g.mux.mu.Unlock()
	_, _, first := g.establishHost(1024, 1<<20)
	if first.SrcPort != FirstLocalPort {
		t.Fatalf("first port %d", first.SrcPort)
	}
	g.mux.mu.Lock()
	g.mux.nextPort = ^uint32(0)
	g.mux.mu.Unlock()
	_, _, last := g.establishHost(1024, 1<<20)
	_, _, wrapped := g.establishHost(1024, 1<<20)
	if last.SrcPort != ^uint32(0) || wrapped.SrcPort != FirstLocalPort+1 {
		t.Fatalf("ports %d then %d; want %d then %d (FirstLocalPort in use)", last.SrcPort, wrapped.SrcPort, ^uint32(0), FirstLocalPort+1)
	}
}

// FuzzParseConnect: accepted lines are exactly "CONNECT <canonical port>"
// or a port with leading zeros; nothing panics.
func FuzzParseConnect(f *testing.F) {
	for _, s := range []string{"CONNECT 1024", "CONNECT ", "CONNECT 4294967296", "CONNECT +1", "OK 5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		port, err := ParseConnect(s)
		if err != nil {
			return
		}
		arg := strings.TrimLeft(strings.TrimPrefix(s, "CONNECT "), "0")
		if arg == "" {
			arg = "0"
		}
		if arg != strconv.FormatUint(uint64(port), 10) {
			t.Fatalf("%q parsed as %d", s, port)
		}
	})
}
