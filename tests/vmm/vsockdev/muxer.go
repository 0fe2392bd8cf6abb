package vsockdev

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Limits. Each is enforced and its behaviour at the limit is tested.
const (
	// MaxConnections is the number of live connections (both directions).
	// A guest REQUEST beyond it gets an RST; a host CONNECT beyond it has
	// its Unix connection closed without "OK".
	MaxConnections = 1023
	// BufAlloc is the receive buffer we advertise to the guest per
	// connection: at most this many guest→host bytes are held for a slow
	// host reader. A guest that sends beyond its credit gets an RST.
	BufAlloc = 256 << 10
	// CreditUpdateThreshold: when the guest's view of our free buffer
	// drops below this and we have forwarded bytes it has not been told
	// about, we send CREDIT_UPDATE.
	CreditUpdateThreshold = 64 << 10
	// MaxPacketPayload bounds the payload of one packet in either direction
	// (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE in Linux). Longer guest packets are
	// rejected with an RST.
	MaxPacketPayload = 64 << 10
	// MaxQueuedToGuest bounds host→guest bytes read from the host socket
	// but not yet placed in the guest's rx ring, per connection. The host
	// socket is not read while it is reached, so a guest that does not
	// drain its rx ring throttles the host writer.
	MaxQueuedToGuest = 64 << 10
	// MaxPendingRSTs bounds RSTs queued for packets on unknown
	// connections; beyond it they are dropped (and counted), the guest's
	// own timeouts then apply.
	MaxPendingRSTs = 256
	// MaxConnectLine is the longest accepted "CONNECT <port>\n" line.
	MaxConnectLine = 32
	// HandshakeTimeout bounds how long a host client may take to send its
	// CONNECT line.
	HandshakeTimeout = 5 * time.Second
	// ConnectTimeout bounds how long the guest may take to answer a
	// REQUEST before the host client is disconnected and the guest RST.
	ConnectTimeout = 5 * time.Second
	// DialTimeout bounds connecting to "<uds>_<port>" for a guest REQUEST.
	DialTimeout = 2 * time.Second
	// ShutdownTimeout is how long after a guest SHUTDOWN of both
	// directions we keep draining buffered data into a host socket that
	// does not read, before giving up with an RST.
	ShutdownTimeout = 5 * time.Second
	// FirstLocalPort is where host-initiated connections' local ports start.
	FirstLocalPort = 1 << 30
)

type connState int

const (
	stateLocalInit connState = iota // host CONNECT, REQUEST sent to guest
	statePeerInit                   // guest REQUEST, dialing <uds>_<port>
	stateEstablished
	stateDead
)

type connKey struct{ local, peer uint32 }

type outPkt struct {
	op    Op
	flags uint32
	data  []byte
}

// conn is one host⇄guest stream. All fields but host are guarded by
// Muxer.mu; cond (on Muxer.mu) wakes its reader and writer goroutines.
type conn struct {
	key   connKey
	state connState
	host  *net.UnixConn
	cond  *sync.Cond

	// Towards the guest.
	out          []outPkt
	outData      int
	inReady      bool
	peerBufAlloc uint32
	peerFwdCnt   uint32
	txCnt        uint32 // data bytes queued for the guest

	// From the guest.
	inbuf       []byte
	rxCnt       uint32 // data bytes received from the guest
	fwdCnt      uint32 // of those, bytes written to the host socket
	lastFwdSent uint32 // fwdCnt last told to the guest
	creditQd    bool
	peerShut    uint32
	hostEOF     bool
	localShut   bool

	handshake chan bool // local-init: true on RESPONSE, false on RST
}

// peerCredit is how many more bytes the guest can take. A guest that shrank
// its buffer below what is in flight has none (not a wrapped huge value).
func (c *conn) peerCredit() uint32 {
	inflight := c.txCnt - c.peerFwdCnt
	if inflight > c.peerBufAlloc {
		return 0
	}
	return c.peerBufAlloc - inflight
}

// Stats are cumulative counters.
type Stats struct {
	PacketsToGuest, PacketsFromGuest uint64
	BytesToGuest, BytesFromGuest     uint64 // stream payload bytes
	ConnsOpened, ConnsActive         uint64
	RSTsSent, RSTsDropped            uint64
	BadPackets                       uint64 // malformed chains/headers
}

type stats struct {
	pktTo, pktFrom, bytesTo, bytesFrom, opened, rsts, rstDrop, bad atomic.Uint64
}

// Muxer is the hybrid-vsock host side: it turns guest packets into Unix
// socket traffic and back. The device calls HandleGuest for every tx packet
// and NextPacket to fill rx buffers; Muxer never touches guest memory.
type Muxer struct {
	guestCID uint64
	udsPath  string
	log      *slog.Logger

	mu       sync.Mutex
	conns    map[connKey]*conn
	ready    []*conn // conns with queued packets, round robin
	rstq     []Header
	nextPort uint32
	closed   bool
	rxWake   chan struct{}
	timers   map[*conn]*time.Timer

	wg    sync.WaitGroup
	stats stats
}

// NewMuxer returns a muxer for guestCID forwarding guest connections to
// "<udsPath>_<port>". It does not listen; see Serve.
func NewMuxer(guestCID uint32, udsPath string, log *slog.Logger) *Muxer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Muxer{
		guestCID: uint64(guestCID),
		udsPath:  udsPath,
		log:      log,
		conns:    make(map[connKey]*conn),
		nextPort: FirstLocalPort,
		rxWake:   make(chan struct{}, 1),
		timers:   make(map[*conn]*time.Timer),
	}
}

// RxWake is signalled whenever packets for the guest become pending.
func (m *Muxer) RxWake() <-chan struct{} { return m.rxWake }

// Stats returns a snapshot of the counters.
func (m *Muxer) Stats() Stats {
	m.mu.Lock()
	active := uint64(len(m.conns))
	m.mu.Unlock()
	s := &m.stats
	return Stats{
		PacketsToGuest: s.pktTo.Load(), PacketsFromGuest: s.pktFrom.Load(),
		BytesToGuest: s.bytesTo.Load(), BytesFromGuest: s.bytesFrom.Load(),
		ConnsOpened: s.opened.Load(), ConnsActive: active,
		RSTsSent: s.rsts.Load(), RSTsDropped: s.rstDrop.Load(), BadPackets: s.bad.Load(),
	}
}

func (m *Muxer) wake() {
	select {
	case m.rxWake <- struct{}{}:
	default:
	}
}

// queue appends a packet for the guest. Callers hold mu.
func (m *Muxer) queue(c *conn, p outPkt) {
	c.out = append(c.out, p)
	c.outData += len(p.data)
	if !c.inReady {
		c.inReady = true
		m.ready = append(m.ready, c)
	}
	m.wake()
}

// rstUnknown answers a packet with no connection. Callers hold mu.
func (m *Muxer) rstUnknown(h Header) {
	if len(m.rstq) >= MaxPendingRSTs {
		m.stats.rstDrop.Add(1)
		return
	}
	m.rstq = append(m.rstq, Header{
		SrcCID: HostCID, DstCID: m.guestCID, SrcPort: h.DstPort, DstPort: h.SrcPort,
		Type: TypeStream, Op: OpRst,
	})
	m.wake()
}

// kill ends c for the reason why (logged, so a connection a host client
// sees closed can be traced to the guest or the device). With rst an RST is
// queued for the guest; abort drops data not yet delivered. Callers hold mu.
func (m *Muxer) kill(c *conn, rst, abort bool, why string) {
	if c.state == stateDead {
		return
	}
	m.log.Debug("vsock: connection ended", "local", c.key.local, "peer", c.key.peer, "why", why, "rst", rst,
		"undelivered_to_guest", c.outData, "unforwarded_to_host", len(c.inbuf))
	c.state = stateDead
	if m.conns[c.key] == c {
		delete(m.conns, c.key)
	}
	if t := m.timers[c]; t != nil {
		t.Stop()
		delete(m.timers, c)
	}
	if abort {
		c.out, c.outData = nil, 0
	}
	if rst {
		m.queue(c, outPkt{op: OpRst})
	}
	if c.host != nil {
		c.host.Close()
	}
	if c.handshake != nil {
		select {
		case c.handshake <- false:
		default:
		}
	}
	c.cond.Broadcast()
}

// HasPending reports whether a packet for the guest is queued.
func (m *Muxer) HasPending() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.rstq) > 0 || len(m.ready) > 0
}

// NextPacket dequeues the next packet for the guest with at most maxPayload
// payload bytes (data packets are split to fit the guest's buffer). The
// payload is valid until the next call.
func (m *Muxer) NextPacket(maxPayload int) (Header, []byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.rstq) > 0 {
		h := m.rstq[0]
		m.rstq = m.rstq[1:]
		m.stats.pktTo.Add(1)
		m.stats.rsts.Add(1)
		return h, nil, true
	}
	for len(m.ready) > 0 {
		c := m.ready[0]
		m.ready = m.ready[1:]
		if len(c.out) == 0 {
			c.inReady = false
			continue
		}
		p := &c.out[0]
		var data []byte
		if p.op == OpRW {
			if maxPayload <= 0 {
				m.ready = append([]*conn{c}, m.ready...)
				return Header{}, nil, false
			}
			n := min(len(p.data), maxPayload, MaxPacketPayload)
			data, p.data = p.data[:n], p.data[n:]
			c.outData -= n
		}
		h := Header{
			SrcCID: HostCID, DstCID: m.guestCID, SrcPort: c.key.local, DstPort: c.key.peer,
			Len: uint32(len(data)), Type: TypeStream, Op: p.op, Flags: p.flags,
			BufAlloc: BufAlloc, FwdCnt: c.fwdCnt,
		}
		c.lastFwdSent = c.fwdCnt
		if p.op == OpCreditUpdate {
			c.creditQd = false
		}
		if p.op == OpRst {
			m.stats.rsts.Add(1)
		}
		if p.op != OpRW || len(p.data) == 0 {
			c.out = c.out[1:]
		}
		if len(c.out) > 0 {
			m.ready = append(m.ready, c)
		} else {
			c.inReady = false
		}
		if data != nil {
			c.cond.Broadcast() // the reader may have room again
		}
		m.stats.pktTo.Add(1)
		m.stats.bytesTo.Add(uint64(len(data)))
		return h, data, true
	}
	return Header{}, nil, false
}

// HandleGuest processes one packet the guest sent. payload is copied.
func (m *Muxer) HandleGuest(h Header, payload []byte) {
	m.stats.pktFrom.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	if h.SrcCID != m.guestCID || h.DstCID != HostCID {
		// Not addressed to the host (or spoofed): nothing to reset.
		m.stats.bad.Add(1)
		m.log.Debug("vsock: dropping misaddressed packet", "hdr", h)
		return
	}
	key := connKey{local: h.DstPort, peer: h.SrcPort}
	c := m.conns[key]
	if h.Type != TypeStream || int(h.Len) != len(payload) {
		m.stats.bad.Add(1)
		if c != nil {
			m.kill(c, true, true, "bad packet from the guest (type or length)")
		} else if h.Op != OpRst {
			m.rstUnknown(h)
		}
		return
	}
	if c == nil {
		switch h.Op {
		case OpRequest:
			m.guestConnect(h, key)
		case OpRst:
		default:
			m.rstUnknown(h)
		}
		return
	}
	// Every packet carries the guest's receive credit.
	if c.peerBufAlloc != h.BufAlloc || c.peerFwdCnt != h.FwdCnt {
		c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
		c.cond.Broadcast()
	}
	switch h.Op {
	case OpRst:
		m.kill(c, false, true, "guest sent RST")
	case OpResponse:
		if c.state != stateLocalInit {
			m.kill(c, true, true, "guest RESPONSE on a connection not connecting")
			return
		}
		c.state = stateEstablished
		select { // buffered; never block under mu
		case c.handshake <- true:
		default:
		}
	case OpRW:
		if c.state != stateEstablished || c.peerShut&ShutdownSend != 0 {
			m.kill(c, true, true, "guest data on a connection not established or shut for sending")
			return
		}
		if len(payload) == 0 {
			return
		}
		if c.rxCnt-c.fwdCnt+uint32(len(payload)) > BufAlloc {
			m.log.Warn("vsock: guest exceeded its credit", "hdr", h)
			m.kill(c, true, true, "guest exceeded its credit")
			return
		}
		c.inbuf = append(c.inbuf, payload...)
		c.rxCnt += uint32(len(payload))
		m.stats.bytesFrom.Add(uint64(len(payload)))
		c.cond.Broadcast()
	case OpCreditUpdate:
		// Credit already taken above.
	case OpCreditRequest:
		m.queueCredit(c)
	case OpShutdown:
		c.peerShut |= h.Flags & (ShutdownRcv | ShutdownSend)
		if c.peerShut == ShutdownRcv|ShutdownSend && m.timers[c] == nil {
			m.timers[c] = time.AfterFunc(ShutdownTimeout, func() {
				m.mu.Lock()
				defer m.mu.Unlock()
				if c.state != stateDead {
					m.log.Debug("vsock: shutdown drain timed out", "local", c.key.local, "peer", c.key.peer)
					m.kill(c, true, true, "shutdown drain timed out")
				}
			})
		}
		m.maybeFinish(c)
		c.cond.Broadcast()
	default:
		m.kill(c, true, true, "unknown op "+h.Op.String())
	}
}

func (m *Muxer) queueCredit(c *conn) {
	if !c.creditQd && c.state != stateDead {
		c.creditQd = true
		m.queue(c, outPkt{op: OpCreditUpdate})
	}
}

// maybeFinish ends a connection both sides have finished with: the guest
// will not send, its data has been forwarded, and it will not receive or
// the host has nothing more to say. Callers hold mu.
func (m *Muxer) maybeFinish(c *conn) {
	if c.state != stateEstablished || c.peerShut&ShutdownSend == 0 || len(c.inbuf) != 0 || c.rxCnt != c.fwdCnt {
		return
	}
	if c.peerShut&ShutdownRcv != 0 || c.hostEOF {
		m.kill(c, true, false, "both sides finished")
	}
}

func (m *Muxer) newConn(key connKey, st connState, host *net.UnixConn) *conn {
	c := &conn{key: key, state: st, host: host}
	c.cond = sync.NewCond(&m.mu)
	m.conns[key] = c
	m.stats.opened.Add(1)
	return c
}

// guestConnect handles a guest REQUEST to host port key.local. Callers
// hold mu.
func (m *Muxer) guestConnect(h Header, key connKey) {
	if len(m.conns) >= MaxConnections {
		m.log.Warn("vsock: connection limit reached, refusing guest connection", "port", key.local)
		m.rstUnknown(h)
		return
	}
	c := m.newConn(key, statePeerInit, nil)
	c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
	path := m.udsPath + "_" + strconv.FormatUint(uint64(key.local), 10)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		nc, err := net.DialTimeout("unix", path, DialTimeout)
		m.mu.Lock()
		defer m.mu.Unlock()
		if err != nil {
			m.log.Debug("vsock: guest connection refused", "path", path, "err", err)
			m.kill(c, true, true, "host socket for the guest connection: "+err.Error())
			return
		}
		if c.state == stateDead || m.closed {
			nc.Close()
			m.kill(c, false, true, "device closing")
			return
		}
		c.host = nc.(*net.UnixConn)
		c.state = stateEstablished
		m.queue(c, outPkt{op: OpResponse})
		m.startIO(c)
	}()
}

// startIO starts the goroutines copying between c.host and the guest.
// Callers hold mu.
func (m *Muxer) startIO(c *conn) {
	m.wg.Add(2)
	go m.hostReader(c)
	go m.hostWriter(c)
}

// hostReader moves host→guest bytes, reading only as much as the guest has
// credit for, so a guest that does not read throttles the host writer.
func (m *Muxer) hostReader(c *conn) {
	defer m.wg.Done()
	buf := make([]byte, MaxPacketPayload)
	for {
		m.mu.Lock()
		for c.state != stateDead && c.peerShut&ShutdownRcv == 0 &&
			(c.peerCredit() == 0 || c.outData >= MaxQueuedToGuest) {
			c.cond.Wait()
		}
		if c.state == stateDead || c.peerShut&ShutdownRcv != 0 {
			m.mu.Unlock()
			return
		}
		n := min(int(c.peerCredit()), len(buf), MaxQueuedToGuest-c.outData)
		m.mu.Unlock()

		n, err := c.host.Read(buf[:n])

		m.mu.Lock()
		if n > 0 && c.state != stateDead {
			c.txCnt += uint32(n)
			m.queue(c, outPkt{op: OpRW, data: append([]byte(nil), buf[:n]...)})
		}
		if err != nil {
			if c.state != stateDead {
				if errors.Is(err, io.EOF) {
					m.log.Debug("vsock: host client closed its side", "local", c.key.local, "peer", c.key.peer)
					c.hostEOF = true
					c.localShut = true
					m.queue(c, outPkt{op: OpShutdown, flags: ShutdownSend})
					m.maybeFinish(c)
				} else {
					m.kill(c, true, true, "host read: "+err.Error())
				}
			}
			m.mu.Unlock()
			return
		}
		m.mu.Unlock()
	}
}

// hostWriter moves guest→host bytes and returns credit as they drain.
func (m *Muxer) hostWriter(c *conn) {
	defer m.wg.Done()
	var spare []byte
	for {
		m.mu.Lock()
		for c.state != stateDead && len(c.inbuf) == 0 && c.peerShut&ShutdownSend == 0 {
			c.cond.Wait()
		}
		if c.state == stateDead {
			m.mu.Unlock()
			return
		}
		if len(c.inbuf) == 0 { // guest will send no more
			c.host.CloseWrite()
			m.maybeFinish(c)
			m.mu.Unlock()
			return
		}
		chunk := c.inbuf
		c.inbuf = spare[:0]
		m.mu.Unlock()

		n, err := c.host.Write(chunk)

		m.mu.Lock()
		if c.state == stateDead {
			m.mu.Unlock()
			return
		}
		c.fwdCnt += uint32(n)
		if err != nil {
			m.kill(c, true, true, "host write: "+err.Error())
			m.mu.Unlock()
			return
		}
		spare = chunk
		// The guest believes it may send BufAlloc-(rxCnt-lastFwdSent) more.
		if c.fwdCnt != c.lastFwdSent && BufAlloc-(c.rxCnt-c.lastFwdSent) < CreditUpdateThreshold {
			m.queueCredit(c)
		}
		m.maybeFinish(c)
		m.mu.Unlock()
	}
}

// Serve accepts host clients on ln (the hybrid-vsock socket "<uds>") until
// ln is closed.
func (m *Muxer) Serve(ln *net.UnixListener) {
	for {
		uc, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			if err := m.hostConnect(uc); err != nil {
				m.log.Debug("vsock: host connection failed", "err", err)
			}
		}()
	}
}

// ErrRefused means the guest did not accept a host connection.
var ErrRefused = errors.New("connection refused by guest")

// ParseConnect parses a hybrid-vsock "CONNECT <port>" line (without the
// newline).
func ParseConnect(line string) (uint32, error) {
	arg, ok := strings.CutPrefix(line, "CONNECT ")
	if !ok {
		return 0, fmt.Errorf("unable to parse %q: want \"CONNECT <port>\"", line)
	}
	port, err := strconv.ParseUint(arg, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("unable to parse port in %q: %w", line, err)
	}
	return uint32(port), nil
}

// readLine reads one '\n'-terminated line byte by byte so that no stream
// data after it is consumed.
func readLine(r io.Reader, limit int) (string, error) {
	var b [1]byte
	var line []byte
	for len(line) < limit {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return "", fmt.Errorf("unable to read CONNECT line: %w", err)
		}
		if b[0] == '\n' {
			return string(line), nil
		}
		line = append(line, b[0])
	}
	return "", fmt.Errorf("unable to read CONNECT line: longer than %d bytes", limit)
}

// hostConnect runs the hybrid-vsock handshake for one host client.
func (m *Muxer) hostConnect(uc *net.UnixConn) error {
	uc.SetReadDeadline(time.Now().Add(HandshakeTimeout))
	line, err := readLine(uc, MaxConnectLine)
	if err == nil {
		uc.SetReadDeadline(time.Time{})
	}
	var port uint32
	if err == nil {
		port, err = ParseConnect(strings.TrimSuffix(line, "\r"))
	}
	if err != nil {
		uc.Close()
		return err
	}

	m.mu.Lock()
	if m.closed || len(m.conns) >= MaxConnections {
		m.mu.Unlock()
		uc.Close()
		return fmt.Errorf("unable to connect to guest port %d: connection limit %d reached", port, MaxConnections)
	}
	// Ephemeral ports cycle through [FirstLocalPort, 2^32); at most
	// MaxConnections of them are in use, so a free one is near.
	var key connKey
	for {
		if m.nextPort < FirstLocalPort {
			m.nextPort = FirstLocalPort
		}
		key = connKey{local: m.nextPort, peer: port}
		m.nextPort++
		if m.conns[key] == nil {
			break
		}
	}
	c := m.newConn(key, stateLocalInit, uc)
	c.handshake = make(chan bool, 1)
	m.queue(c, outPkt{op: OpRequest})
	m.mu.Unlock()

	t := time.NewTimer(ConnectTimeout)
	defer t.Stop()
	var accepted bool
	select {
	case accepted = <-c.handshake:
	case <-t.C:
	}
	m.mu.Lock()
	if !accepted || c.state != stateEstablished {
		m.kill(c, c.state != stateDead, true, "guest did not accept the host connection")
		m.mu.Unlock()
		return fmt.Errorf("unable to connect to guest port %d: %w", port, ErrRefused)
	}
	m.mu.Unlock()
	// Guest data arriving meanwhile waits in inbuf: the writer goroutine
	// starts only after "OK", so the line always precedes stream bytes. A
	// concurrent kill closes uc and fails this write.
	uc.SetWriteDeadline(time.Now().Add(HandshakeTimeout))
	_, err = fmt.Fprintf(uc, "OK %d\n", key.local)
	uc.SetWriteDeadline(time.Time{})
	m.mu.Lock()
	defer m.mu.Unlock()
	if err == nil && c.state == stateDead {
		err = net.ErrClosed
	}
	if err != nil {
		m.kill(c, true, true, "acknowledging the host connection: "+err.Error())
		return fmt.Errorf("unable to acknowledge connection: %w", err)
	}
	m.startIO(c)
	return nil
}

// Reset drops every connection without telling the guest, for a device
// reset (the guest's sockets are gone too).
func (m *Muxer) Reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.resetLocked()
}

func (m *Muxer) resetLocked() {
	for _, c := range m.conns {
		m.kill(c, false, true, "device reset")
	}
	m.ready, m.rstq = nil, nil
}

// Close drops all connections and waits for their goroutines. The caller
// closes the listener passed to Serve first.
func (m *Muxer) Close() {
	m.mu.Lock()
	m.closed = true
	m.resetLocked()
	m.mu.Unlock()
	m.wg.Wait()
}
