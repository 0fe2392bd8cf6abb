package vsockdev

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keelvm/keel/tests/vmm/vhostuser"
	"github.com/keelvm/keel/tests/vmm/virtq"
)

const (
	testGuestCID = 3
	ringSize     = 64
	rxBufSize    = 4096 // Linux's VIRTIO_VSOCK_DEFAULT_RX_BUF_SIZE
	waitTimeout  = 5 * time.Second
)

// fakeGuest plays the guest driver: tx ring with one descriptor per packet,
// rx ring with header+buffer descriptor pairs like Linux posts them.
type fakeGuest struct {
	t      *testing.T
	mux    *Muxer
	be     *backend
	uds    string
	mem    *virtq.DriverMem
	rx, tx *virtq.DriverRing
	txKick chan struct{}
	rxKick chan struct{}
	rxUsed chan struct{}

	mu        sync.Mutex
	txBufs    [][]byte // per descriptor
	txGPA     []uint64
	txFree    []uint16
	rxBufs    [][2][]byte
	pendingRx []virtq.Used
}

func newFakeGuest(t *testing.T) *fakeGuest {
	t.Helper()
	dir := t.TempDir()
	g := &fakeGuest{t: t, uds: filepath.Join(dir, "v.sock"),
		txKick: make(chan struct{}, 1), rxKick: make(chan struct{}, 1), rxUsed: make(chan struct{}, 1)}
	var err error
	if g.mem, err = virtq.NewDriverMem(0x100000, 8<<20); err != nil {
		t.Fatal(err)
	}
	if g.rx, err = virtq.NewDriverRing(g.mem, ringSize); err != nil {
		t.Fatal(err)
	}
	if g.tx, err = virtq.NewDriverRing(g.mem, ringSize); err != nil {
		t.Fatal(err)
	}
	for i := range uint16(ringSize) {
		gpa, b, err := g.mem.Alloc(HeaderSize+MaxPacketPayload+16, 8)
		if err != nil {
			t.Fatal(err)
		}
		g.txBufs, g.txGPA, g.txFree = append(g.txBufs, b), append(g.txGPA, gpa), append(g.txFree, i)
	}
	// rx: chains (2i, 2i+1) = header, data.
	for i := range uint16(ringSize / 2) {
		hg, hb, _ := g.mem.Alloc(HeaderSize, 8)
		dg, db, err := g.mem.Alloc(rxBufSize, 8)
		if err != nil {
			t.Fatal(err)
		}
		g.rx.SetDesc(2*i, virtq.Desc{Addr: hg, Len: HeaderSize, Flags: virtq.DescFWrite | virtq.DescFNext, Next: 2*i + 1})
		g.rx.SetDesc(2*i+1, virtq.Desc{Addr: dg, Len: rxBufSize, Flags: virtq.DescFWrite})
		g.rxBufs = append(g.rxBufs, [2][]byte{hb, db})
		g.rx.Publish(2 * i)
	}
	g.mux = NewMuxer(testGuestCID, g.uds, nil)
	g.be = &backend{mux: g.mux, guestCID: testGuestCID, log: g.mux.log}
	rxq, err := g.rx.DeviceQueue()
	if err != nil {
		t.Fatal(err)
	}
	txq, err := g.tx.DeviceQueue()
	if err != nil {
		t.Fatal(err)
	}
	notifyRx := func() error {
		select {
		case g.rxUsed <- struct{}{}:
		default:
		}
		return nil
	}
	err = g.be.Start([]*vhostuser.Vring{
		vhostuser.NewVring(rxq, g.rxKick, notifyRx),
		vhostuser.NewVring(txq, g.txKick, func() error { return nil }),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: g.uds, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); g.mux.Serve(ln) }()
	t.Cleanup(func() {
		ln.Close()
		<-served
		g.be.Stop()
		g.mux.Close()
	})
	return g
}

func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// sendRaw posts one tx chain holding b and kicks.
func (g *fakeGuest) sendRaw(b []byte) {
	g.t.Helper()
	g.mu.Lock()
	for _, u := range g.tx.ReapUsed() {
		g.txFree = append(g.txFree, u.Head)
	}
	if len(g.txFree) == 0 {
		g.mu.Unlock()
		g.t.Fatal("tx ring full")
	}
	i := g.txFree[0]
	g.txFree = g.txFree[1:]
	copy(g.txBufs[i], b)
	g.tx.SetDesc(i, virtq.Desc{Addr: g.txGPA[i], Len: uint32(len(b))})
	g.tx.Publish(i)
	g.mu.Unlock()
	kick(g.txKick)
}

// waitTxDrained waits until the device consumed every tx chain.
func (g *fakeGuest) waitTxDrained() {
	g.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		g.mu.Lock()
		for _, u := range g.tx.ReapUsed() {
			g.txFree = append(g.txFree, u.Head)
		}
		n := len(g.txFree)
		g.mu.Unlock()
		if n == ringSize {
			return
		}
		if time.Now().After(deadline) {
			g.t.Fatal("device did not consume tx chains")
		}
		time.Sleep(time.Millisecond)
	}
}

func (g *fakeGuest) send(h Header, payload []byte) {
	g.t.Helper()
	h.Len = uint32(len(payload))
	if h.Type == 0 {
		h.Type = TypeStream
	}
	if h.SrcCID == 0 {
		h.SrcCID = testGuestCID
	}
	if h.DstCID == 0 {
		h.DstCID = HostCID
	}
	b := make([]byte, HeaderSize+len(payload))
	h.Marshal(b)
	copy(b[HeaderSize:], payload)
	g.sendRaw(b)
}

type pkt struct {
	Header
	data []byte
}

// recv waits up to d for the next rx packet; ok is false on timeout.
func (g *fakeGuest) recvTimeout(d time.Duration) (pkt, bool) {
	g.t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		if p, ok := g.pollRx(); ok {
			return p, true
		}
		select {
		case <-g.rxUsed:
		case <-deadline.C:
			return pkt{}, false
		}
	}
}

func (g *fakeGuest) pollRx() (pkt, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pendingRx = append(g.pendingRx, g.rx.ReapUsed()...)
	if len(g.pendingRx) == 0 {
		return pkt{}, false
	}
	u := g.pendingRx[0]
	g.pendingRx = g.pendingRx[1:]
	bufs := g.rxBufs[u.Head/2]
	if u.Len < HeaderSize {
		g.t.Errorf("rx used length %d shorter than a header", u.Len)
	}
	h, err := ParseHeader(bufs[0])
	if err != nil {
		g.t.Fatal(err)
	}
	if int(u.Len) != HeaderSize+int(h.Len) {
		g.t.Errorf("used length %d does not match header length %d", u.Len, h.Len)
	}
	p := pkt{Header: h, data: append([]byte(nil), bufs[1][:h.Len]...)}
	// Re-post the buffer like the driver's refill.
	g.rx.Publish(u.Head)
	kick(g.rxKick)
	return p, true
}

func (g *fakeGuest) recv() pkt {
	g.t.Helper()
	p, ok := g.recvTimeout(waitTimeout)
	if !ok {
		g.t.Fatal("timed out waiting for an rx packet")
	}
	return p
}

// expectNone asserts no packet arrives within d.
func (g *fakeGuest) expectNone(d time.Duration) {
	g.t.Helper()
	if p, ok := g.recvTimeout(d); ok {
		g.t.Fatalf("unexpected packet %v", p.Header)
	}
}

// hostConnect dials the hybrid socket and sends CONNECT port.
func (g *fakeGuest) hostConnect(port uint32) *net.UnixConn {
	g.t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: g.uds, Net: "unix"})
	if err != nil {
		g.t.Fatal(err)
	}
	g.t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "CONNECT %d\n", port)
	return c
}

// establishHost completes a host-initiated connection; the guest listens
// on port with buf_alloc bufAlloc.
func (g *fakeGuest) establishHost(port, bufAlloc uint32) (*net.UnixConn, *bufio.Reader, Header) {
	g.t.Helper()
	c := g.hostConnect(port)
	req := g.recv()
	if req.Op != OpRequest || req.DstPort != port || req.SrcCID != HostCID || req.DstCID != testGuestCID || req.SrcPort < FirstLocalPort {
		g.t.Fatalf("want REQUEST to port %d, got %v", port, req.Header)
	}
	g.send(Header{Op: OpResponse, SrcPort: port, DstPort: req.SrcPort, BufAlloc: bufAlloc}, nil)
	r := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(waitTimeout))
	line, err := r.ReadString('\n')
	c.SetReadDeadline(time.Time{})
	if err != nil || line != fmt.Sprintf("OK %d\n", req.SrcPort) {
		g.t.Fatalf("handshake line %q, %v", line, err)
	}
	return c, r, req.Header
}

// guestListen listens on "<uds>_<port>".
func (g *fakeGuest) guestListen(port uint32) *net.UnixListener {
	g.t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: fmt.Sprintf("%s_%d", g.uds, port), Net: "unix"})
	if err != nil {
		g.t.Fatal(err)
	}
	g.t.Cleanup(func() { ln.Close() })
	return ln
}

func noLeftoverSockets(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) != 0 {
		t.Fatalf("left behind: %s", strings.Join(names, ", "))
	}
}
