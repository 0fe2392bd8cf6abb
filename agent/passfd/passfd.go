// Package passfd is the agent side of Kata's passthrough-fd stdio fast path
// (runtime-rs "passfd", docs/how-to/how-to-use-passthroughfd-io-within-runtime-rs.md).
//
// The host opens one vsock connection per stdio stream to the agent's passfd
// port (agent.passfd_listener_port, Kata's default 1027). With Dragonball
// the runtime hands the VMM a FIFO over "passfd\n" + "<port> keep" and the
// VMM makes the connection; with plain vsock the host dials itself. Either
// way the host learns its own end's port (the "OK <hostport>" reply, or the
// local address) and sends it in CreateContainerRequest/ExecProcessRequest
// stdin_port, stdout_port, stderr_port (0 = stream not passed through).
// The agent therefore keys accepted connections by the peer's port, exactly
// as Kata's passfd_io.rs does, and the container code claims them with Take.
//
// Unlike Kata, unclaimed connections do not accumulate forever: at most
// MaxPending wait, and one older than PendingTTL is closed at the next
// arrival.
package passfd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/mdlayher/vsock"
)

// DefaultPort is Kata's default agent.passfd_listener_port.
const DefaultPort = 1027

const (
	// MaxPending bounds connections accepted but not yet claimed; at the
	// limit a new connection is closed at once (the host sees EOF).
	MaxPending = 256
	// PendingTTL is how long an unclaimed connection is kept: the RPC that
	// names its port follows within milliseconds, so a connection still
	// unclaimed after a minute belongs to a request that failed.
	PendingTTL = time.Minute
	// TakeTimeout is the wait a caller should give Take: the host connects
	// before it sends the RPC, so a connection later than this is lost.
	TakeTimeout = 5 * time.Second
)

// Errors from Take.
var (
	ErrNotFound = errors.New("no passfd connection for port")
	ErrClosed   = errors.New("passfd listener closed")
)

// PeerPort returns the remote port of a vsock connection: the host-side port
// the runtime put in stdin_port/stdout_port/stderr_port.
func PeerPort(c net.Conn) (uint32, error) {
	if a, ok := c.RemoteAddr().(*vsock.Addr); ok {
		return a.Port, nil
	}
	return 0, fmt.Errorf("passfd: remote address %v is not vsock", c.RemoteAddr())
}

// Listener accepts passfd connections and hands them out by port.
type Listener struct {
	l      net.Listener
	portOf func(net.Conn) (uint32, error)
	ttl    time.Duration

	mu      sync.Mutex
	pending map[uint32]pendingConn
	closed  bool
	arrived chan struct{}
}

type pendingConn struct {
	c  net.Conn
	at time.Time
}

// NewListener wraps l. portOf identifies a connection (nil: PeerPort, for
// vsock); tests with unix sockets pass their own.
func NewListener(l net.Listener, portOf func(net.Conn) (uint32, error)) *Listener {
	if portOf == nil {
		portOf = PeerPort
	}
	return &Listener{l: l, portOf: portOf, ttl: PendingTTL,
		pending: map[uint32]pendingConn{}, arrived: make(chan struct{})}
}

// Serve accepts until ctx is done or the listener fails, then closes the
// listener and every unclaimed connection. It returns nil after ctx is done.
func (p *Listener) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { p.l.Close() })
	defer stop()
	defer p.shutdown()
	for {
		c, err := p.l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("passfd: accept: %w", err)
		}
		// Identification may read from the connection (tests), so it must
		// not stall the accept loop.
		go p.add(c)
	}
}

func (p *Listener) add(c net.Conn) {
	port, err := p.portOf(c)
	if err != nil || port == 0 {
		c.Close()
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.expireLocked(time.Now())
	if old, ok := p.pending[port]; ok {
		// Ports are unique among live connections: the old one is dead.
		old.c.Close()
		delete(p.pending, port)
	}
	if p.closed || len(p.pending) >= MaxPending {
		c.Close()
		return
	}
	p.pending[port] = pendingConn{c: c, at: time.Now()}
	close(p.arrived)
	p.arrived = make(chan struct{})
}

func (p *Listener) expireLocked(now time.Time) {
	for port, pc := range p.pending {
		if now.Sub(pc.at) > p.ttl {
			pc.c.Close()
			delete(p.pending, port)
		}
	}
}

func (p *Listener) shutdown() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for port, pc := range p.pending {
		pc.c.Close()
		delete(p.pending, port)
	}
	close(p.arrived)
	p.arrived = make(chan struct{})
}

// Take claims the connection from port, waiting up to timeout for it to be
// accepted (the host may connect just after sending the RPC). Port 0 means
// "not passed through" and is an error here; callers check it first.
func (p *Listener) Take(port uint32, timeout time.Duration) (net.Conn, error) {
	if port == 0 {
		return nil, fmt.Errorf("passfd: port 0: %w", ErrNotFound)
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		if pc, ok := p.pending[port]; ok {
			delete(p.pending, port)
			p.mu.Unlock()
			return pc.c, nil
		}
		closed, arrived := p.closed, p.arrived
		p.mu.Unlock()
		if closed {
			return nil, ErrClosed
		}
		select {
		case <-arrived:
		case <-deadline.C:
			return nil, fmt.Errorf("passfd: port %d after %v: %w", port, timeout, ErrNotFound)
		}
	}
}

// Pending reports how many connections wait to be claimed.
func (p *Listener) Pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending)
}
