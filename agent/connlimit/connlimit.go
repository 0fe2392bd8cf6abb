// Package connlimit bounds what clients of the agent's ttrpc listener can
// hold: how many connections are open, how long a connection may sit in the
// middle of a frame (slowloris), how long a reply write may block, and how
// many descriptors connections may take, so a new client always finds room.
//
// It wraps the listener and each accepted connection and follows ttrpc's
// framing (a 10-byte header: length, stream id, type, flags, then length
// bytes) in both directions, which tells it, per connection, whether a frame
// is half received and how many requests await a reply. That is what
// "idle" means here: no request awaiting a reply. A host runtime keeps one
// connection for the pod's life (Kata's runtime always has a GetOOMEvent,
// and a WaitProcess per container, pending on it), so a connection with a
// pending request is never evicted, however quiet it is; an idle one is
// evicted only to make room, oldest activity first.
//
// Behaviour at each limit:
//   - MaxConns open: a new connection evicts the idle connection least
//     recently active; with none idle, the new connection is closed at once
//     (refused) and the open ones keep being served.
//   - FrameTimeout: a connection that started a frame and has not completed
//     it within FrameTimeout of the agent waiting for it is closed (its
//     handlers see it gone). Time the reader spends outside Read (writing a
//     reply, handing a request over) does not count.
//   - WriteTimeout: a reply write blocked that long (the client stopped
//     reading) closes the connection.
//   - MaxPending requests awaiting a reply on one connection: the agent
//     stops reading that connection (at a frame boundary) until a reply
//     goes out, so one client cannot make the agent hold an unbounded
//     number of handler goroutines and decoded requests.
//   - The descriptor budget: MaxConns never exceeds RLIMIT_NOFILE minus
//     FDReserve, and if accept(2) still fails with EMFILE/ENFILE (the
//     agent's other descriptors grew), the idle connection least recently
//     active is evicted to free one.
package connlimit

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keelvm/keel/protocol/ttrpcframe"
	"golang.org/x/sys/unix"
)

// Limits, named so their behaviour is documented and tested.
const (
	// DefaultMaxConns caps concurrent connections. A host runtime uses one
	// or two (Kata's runtime: one per sandbox, plus short-lived ones from
	// kata-runtime exec or the monitor); the vsock device in front of the
	// agent allows at most 1023 anyway.
	DefaultMaxConns = 256
	// FDReserve is the part of RLIMIT_NOFILE kept for everything but
	// connections: container stdio pipes, pidfds, state files, cgroups.
	FDReserve = 512
	// FrameTimeout bounds how long a frame may take to arrive once its
	// first byte did, counting only the time the connection's reader waited
	// for it in Read (not time the agent spent elsewhere). The largest frame ttrpc takes is 4 MiB, which even a
	// slow vsock moves in well under a second.
	FrameTimeout = 15 * time.Second
	// WriteTimeout bounds one blocked write of a reply.
	WriteTimeout = 30 * time.Second
	// MaxPending bounds the requests awaiting a reply on one connection.
	// Kata's runtime keeps a few per container (WaitProcess, ReadStdout,
	// ReadStderr) plus GetOOMEvent pending. Across all connections,
	// agent/server caps requests in flight (MaxPendingRequests).
	MaxPending = 1024
	// acceptRetry is the pause when accept(2) is out of descriptors and
	// nothing is idle to evict.
	acceptRetry = 10 * time.Millisecond
)

// ttrpc framing.
const (
	headerLen       = ttrpcframe.HeaderLen
	msgTypeRequest  = 1
	msgTypeResponse = 2
)

// Options configures Wrap; zero values take the defaults above.
type Options struct {
	MaxConns     int
	MaxPending   int
	FrameTimeout time.Duration
	WriteTimeout time.Duration
	// NoFile is the descriptor limit the budget is taken from; 0 reads
	// RLIMIT_NOFILE.
	NoFile uint64
	Log    *slog.Logger
}

// Stats counts what the limits did.
type Stats struct {
	Open, Evicted, Refused, FrameTimeouts, WriteTimeouts int64
}

// Listener is a net.Listener whose connections are bounded as the package
// doc says.
type Listener struct {
	net.Listener
	o   Options
	max int

	mu     sync.Mutex
	conns  map[*conn]struct{}
	closed chan struct{}
	once   sync.Once

	evicted, refused, frameTimeouts, writeTimeouts atomic.Int64
}

// Wrap bounds ln's connections.
func Wrap(ln net.Listener, o Options) *Listener {
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.MaxPending <= 0 {
		o.MaxPending = MaxPending
	}
	if o.FrameTimeout <= 0 {
		o.FrameTimeout = FrameTimeout
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = WriteTimeout
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.NoFile == 0 {
		var rl unix.Rlimit
		if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil {
			o.NoFile = rl.Cur
		}
	}
	return &Listener{Listener: ln, o: o, max: MaxConns(o.MaxConns, o.NoFile), conns: map[*conn]struct{}{}, closed: make(chan struct{})}
}

// MaxConns is the connection cap for a wanted cap and a descriptor limit:
// want, but never more than noFile-FDReserve, and at least 1.
func MaxConns(want int, noFile uint64) int {
	if noFile > 0 {
		budget := int64(noFile) - FDReserve
		if budget < int64(want) {
			want = int(max(budget, 1))
		}
	}
	return want
}

// Max reports the connection cap in force.
func (l *Listener) Max() int { return l.max }

// Stats reports the counters.
func (l *Listener) Stats() Stats {
	l.mu.Lock()
	open := len(l.conns)
	l.mu.Unlock()
	return Stats{Open: int64(open), Evicted: l.evicted.Load(), Refused: l.refused.Load(),
		FrameTimeouts: l.frameTimeouts.Load(), WriteTimeouts: l.writeTimeouts.Load()}
}

// Close closes the listener (not the accepted connections).
func (l *Listener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// Accept returns the next connection, making room for it as described in
// the package doc.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
				if !l.evictOne("out of file descriptors") {
					select {
					case <-l.closed:
						return nil, err
					case <-time.After(acceptRetry):
					}
				}
				continue
			}
			return nil, err
		}
		l.mu.Lock()
		if len(l.conns) >= l.max && !l.evictLocked(fmt.Sprintf("%d connections open", len(l.conns))) {
			l.mu.Unlock()
			nc.Close()
			if n := l.refused.Add(1); n&(n-1) == 0 { // log at powers of two
				l.o.Log.Warn("connection refused: every connection has a request pending", "max", l.max, "refused", l.refused.Load())
			}
			continue
		}
		c := &conn{Conn: nc, l: l, last: time.Now()}
		c.replied = sync.NewCond(&c.mu)
		l.conns[c] = struct{}{}
		l.mu.Unlock()
		return c, nil
	}
}

func (l *Listener) evictOne(why string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.evictLocked(why)
}

// evictLocked closes the idle connection least recently active.
func (l *Listener) evictLocked(why string) bool {
	var victim *conn
	var oldest time.Time
	for c := range l.conns {
		last, idle := c.idle()
		if idle && (victim == nil || last.Before(oldest)) {
			victim, oldest = c, last
		}
	}
	if victim == nil {
		return false
	}
	delete(l.conns, victim)
	l.evicted.Add(1)
	l.o.Log.Info("closing connection: idle, evicted", "why", why, "idle_since", oldest)
	victim.shut(errEvicted)
	return true
}

func (l *Listener) forget(c *conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

var (
	errEvicted      = errors.New("evicted to make room for a new connection")
	errFrameTimeout = errors.New("frame not completed in time")
)

// conn follows the framing of one connection.
type conn struct {
	net.Conn
	l *Listener

	mu      sync.Mutex
	replied *sync.Cond // signalled when pending drops or the conn closes
	last    time.Time  // last byte read or written
	pending int        // requests read minus responses written
	shutErr error      // why the agent closed it
	peerErr error      // why the client's side ended (a read error), if it did
	closed  bool

	// Read side, touched only by the (single) reader goroutine.
	rframe     ttrpcframe.Follower
	frameStart time.Time
	armed      bool      // a read deadline for the current frame is set
	deadline   time.Time // the current frame's read deadline
	readExit   time.Time // when the last Read returned
	credit     time.Duration

	// Write side, touched only by the (single) writer goroutine.
	wframe ttrpcframe.Follower

	closeOnce sync.Once
}

func (c *conn) idle() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last, c.pending == 0 && c.shutErr == nil
}

// shut closes the socket for the agent's own reason; the reader then sees
// io.EOF (evicted) or io.ErrUnexpectedEOF (timeouts), which makes ttrpc end
// the connection quietly instead of waiting for a shutdown.
func (c *conn) shut(why error) {
	c.mu.Lock()
	if c.shutErr == nil {
		c.shutErr = why
	}
	c.replied.Broadcast()
	c.mu.Unlock()
	c.Conn.Close()
}

func (c *conn) Read(p []byte) (int, error) {
	if !c.armed { // at a frame boundary: wait for room for one more request
		c.mu.Lock()
		for c.pending >= c.l.o.MaxPending && c.shutErr == nil && !c.closed {
			c.replied.Wait()
		}
		c.mu.Unlock()
	} else {
		c.extendFrameClock()
	}
	n, err := c.Conn.Read(p)
	c.readExit = time.Now()
	if n > 0 {
		c.readBytes(p[:n])
	}
	if err != nil {
		c.mu.Lock()
		why := c.shutErr
		c.mu.Unlock()
		switch {
		case errors.Is(why, errEvicted):
			return n, io.EOF
		case why != nil:
			return n, io.ErrUnexpectedEOF
		case errors.Is(err, os.ErrDeadlineExceeded) && c.armed:
			c.l.frameTimeouts.Add(1)
			c.l.o.Log.Warn("closing connection: frame not completed in time", "timeout", c.l.o.FrameTimeout, "since", c.frameStart)
			c.shut(errFrameTimeout)
			return n, io.ErrUnexpectedEOF
		default:
			c.peerGone(err)
		}
	}
	return n, err
}

// peerGone records that the client's side of the connection ended (EOF,
// a reset) and, when requests were still awaiting a reply, says so at info
// level: their replies can no longer be delivered, and the log then shows
// the client (or the transport in between) ended the connection, not the
// agent.
func (c *conn) peerGone(err error) {
	c.mu.Lock()
	first := c.peerErr == nil && !c.closed
	if first {
		c.peerErr = err
	}
	pending := c.pending
	c.mu.Unlock()
	if first && pending > 0 {
		c.l.o.Log.Info("connection ended by the client with requests awaiting a reply", "pending", pending, "err", err)
	}
}

// extendFrameClock moves the frame deadline on by the time the reader spent
// outside Read since its last Read returned. The frame clock measures the
// client (how long the agent waited in Read for the rest of a frame), not
// the agent: the reader goroutine may sit elsewhere mid-frame, in
// agent/streamread writing a reply to a client that reads it late, or in
// ttrpc waiting to hand a request over, and a frame the client already sent
// whole must not time out meanwhile. That time is bounded on its own
// (WriteTimeout per blocked write). Gaps are credited once they add up to
// a millisecond, so a stream of reads does not reset the timer each time.
func (c *conn) extendFrameClock() {
	c.credit += time.Since(c.readExit)
	if c.credit < time.Millisecond {
		return
	}
	c.deadline = c.deadline.Add(c.credit)
	c.credit = 0
	c.Conn.SetReadDeadline(c.deadline)
}

// readBytes advances the read-side frame parser over b and arms or clears
// the frame deadline.
func (c *conn) readBytes(b []byte) {
	completed, requests := c.rframe.Feed(b, msgTypeRequest)
	mid := c.rframe.Mid()
	now := time.Now()
	c.mu.Lock()
	c.last = now
	c.pending += requests
	c.mu.Unlock()
	switch {
	case mid && (!c.armed || completed):
		// A frame began (the clock runs from the first frame that did not
		// complete in this read, so a busy stream of frames never trips it).
		c.frameStart, c.armed = now, true
		c.deadline, c.credit = now.Add(c.l.o.FrameTimeout), 0
		c.Conn.SetReadDeadline(c.deadline)
	case !mid && c.armed:
		c.armed = false
		c.Conn.SetReadDeadline(time.Time{})
	}
}

func (c *conn) Write(p []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.l.o.WriteTimeout))
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.writeBytes(p[:n])
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.l.writeTimeouts.Add(1)
		c.l.o.Log.Warn("closing connection: the client stopped reading its replies", "timeout", c.l.o.WriteTimeout)
		c.shut(errors.New("write timed out"))
	}
	return n, err
}

// writeBytes advances the write-side frame parser: each response header
// settles one pending request.
func (c *conn) writeBytes(b []byte) {
	_, responses := c.wframe.Feed(b, msgTypeResponse)
	c.mu.Lock()
	c.last = time.Now()
	c.pending = max(c.pending-responses, 0)
	if responses > 0 {
		c.replied.Broadcast()
	}
	c.mu.Unlock()
}

func (c *conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.l.forget(c)
		c.mu.Lock()
		c.closed = true
		c.replied.Broadcast()
		pending, ours, peer := c.pending, c.shutErr, c.peerErr
		c.mu.Unlock()
		if pending > 0 && ours == nil && peer == nil {
			// Neither a limit here nor the client ended it: the server
			// (ttrpc) closes it, e.g. a reply it could not send, or a
			// shutdown. Those replies are lost: say so.
			c.l.o.Log.Info("closing connection with requests awaiting a reply", "pending", pending)
		}
		err = c.Conn.Close()
	})
	return err
}
