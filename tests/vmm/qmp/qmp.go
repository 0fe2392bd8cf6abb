// Package qmp is a small client for the QEMU Machine Protocol over a unix
// socket: it reads the greeting, negotiates capabilities, runs commands
// (matched to replies by id, so several goroutines may share a client) and
// fans asynchronous events (SHUTDOWN, DEVICE_DELETED, ...) out to
// subscribers.
//
// One goroutine reads the socket; it never blocks on a slow consumer:
// replies go to buffered per-command channels and events are dropped (and
// counted) when a subscriber's buffer is full.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned for commands that cannot complete because the
// connection is closed (by Close, by QEMU exiting, or by a read error).
var ErrClosed = errors.New("qmp: connection closed")

// EventBuffer is the capacity of each subscriber's event channel.
const EventBuffer = 256

// Error is an error reply from QEMU.
type Error struct {
	Command string
	Class   string // e.g. "GenericError", "CommandNotFound", "DeviceNotFound"
	Desc    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Event is an asynchronous QMP event.
type Event struct {
	Name      string
	Data      json.RawMessage
	Timestamp time.Time
}

// Version is QEMU's version from the greeting.
type Version struct {
	Major, Minor, Micro int
	Package             string
}

// Client is a QMP connection. All methods are safe for concurrent use.
type Client struct {
	conn    net.Conn
	version Version

	writeMu sync.Mutex

	mu      sync.Mutex
	nextID  uint64
	pending []*call // in send order, for replies that carry no id
	subs    map[int]chan Event
	nextSub int
	defSub  <-chan Event
	closed  bool
	readErr error

	dropped atomic.Uint64
	done    chan struct{}
}

type call struct {
	id    string
	reply chan message
}

// message is any QMP message from the server.
type message struct {
	QMP    *json.RawMessage `json:"QMP"`
	Return json.RawMessage  `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	ID        json.RawMessage `json:"id"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// Dial connects to a QMP unix socket and completes the handshake.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("unable to connect to QMP socket: %w", err)
	}
	return New(ctx, conn)
}

// New runs the QMP handshake (greeting, qmp_capabilities) on conn and
// returns a client that owns it. On error conn is closed.
func New(ctx context.Context, conn net.Conn) (*Client, error) {
	c, err := handshake(ctx, conn)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return c, nil
}

func handshake(ctx context.Context, conn net.Conn) (*Client, error) {
	// Bound the greeting by ctx: a peer that never speaks must not hang us.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Unix(1, 0)) })
	dec := json.NewDecoder(bufio.NewReaderSize(conn, 64*1024))
	var greet struct {
		QMP *struct {
			Version struct {
				QEMU struct {
					Major int `json:"major"`
					Minor int `json:"minor"`
					Micro int `json:"micro"`
				} `json:"qemu"`
				Package string `json:"package"`
			} `json:"version"`
		} `json:"QMP"`
	}
	err := dec.Decode(&greet)
	if !stop() {
		return nil, fmt.Errorf("qmp greeting: %w", ctx.Err())
	}
	if err != nil {
		return nil, fmt.Errorf("unable to read QMP greeting: %w", err)
	}
	if greet.QMP == nil {
		return nil, errors.New("qmp: peer did not send a QMP greeting")
	}
	v := greet.QMP.Version
	c := &Client{
		conn:    conn,
		version: Version{v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro, v.Package},
		subs:    map[int]chan Event{},
		done:    make(chan struct{}),
	}
	c.defSub, _ = c.Subscribe()
	go c.readLoop(dec)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.shutdown(err)
		<-c.done
		return nil, err
	}
	return c, nil
}

// Version returns QEMU's version from the greeting.
func (c *Client) Version() Version { return c.version }

// Done is closed when the connection is gone and all waiters are released.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended (nil while it is open).
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readErr
}

// DroppedEvents counts events discarded because a subscriber was full.
func (c *Client) DroppedEvents() uint64 { return c.dropped.Load() }

// Close closes the connection; pending commands fail with ErrClosed.
func (c *Client) Close() error {
	c.shutdown(ErrClosed)
	<-c.done
	return nil
}

func (c *Client) shutdown(reason error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.readErr = reason
	c.mu.Unlock()
	// The read loop notices the closed conn and releases everyone.
	_ = c.conn.Close()
}

func (c *Client) readLoop(dec *json.Decoder) {
	defer close(c.done)
	var err error
	for {
		var m message
		if err = dec.Decode(&m); err != nil {
			break
		}
		switch {
		case m.Event != "":
			c.deliverEvent(m)
		case m.Return != nil || m.Error != nil:
			c.deliverReply(m)
		}
		// Anything else (a second greeting, unknown keys) is ignored.
	}
	c.mu.Lock()
	c.closed = true
	if c.readErr == nil {
		c.readErr = fmt.Errorf("%w: %v", ErrClosed, err)
	}
	pending := c.pending
	c.pending = nil
	subs := c.subs
	c.subs = map[int]chan Event{}
	c.mu.Unlock()
	_ = c.conn.Close()
	for _, p := range pending {
		close(p.reply)
	}
	for _, ch := range subs {
		close(ch)
	}
}

func (c *Client) deliverReply(m message) {
	id := ""
	if len(m.ID) > 0 {
		if err := json.Unmarshal(m.ID, &id); err != nil {
			id = string(m.ID)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, p := range c.pending {
		// QEMU echoes our id; only replies to unparseable input lack one,
		// and QMP answers in order, so those belong to the oldest call.
		if id == "" || p.id == id {
			c.pending = append(c.pending[:i:i], c.pending[i+1:]...)
			p.reply <- m
			return
		}
	}
}

func (c *Client) deliverEvent(m message) {
	ev := Event{Name: m.Event, Data: m.Data}
	if m.Timestamp != nil {
		ev.Timestamp = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ch := range c.subs {
		select {
		case ch <- ev:
		default:
			c.dropped.Add(1)
		}
	}
}

// Events returns the client's default event subscription, created with the
// client so no event after the handshake is missed. It is closed when the
// connection ends. Use Subscribe for independent consumers.
func (c *Client) Events() <-chan Event { return c.defSub }

// Subscribe returns a new channel receiving every later event, and a
// function that unsubscribes (and closes the channel).
func (c *Client) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, EventBuffer)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		close(ch)
		return ch, func() {}
	}
	n := c.nextSub
	c.nextSub++
	c.subs[n] = ch
	return ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if s, ok := c.subs[n]; ok {
			delete(c.subs, n)
			close(s)
		}
	}
}

// Execute runs a QMP command. args (may be nil) is marshalled as
// "arguments"; the reply's "return" is unmarshalled into result unless it
// is nil. QEMU error replies come back as *Error.
func (c *Client) Execute(ctx context.Context, cmd string, args any, result any) error {
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        string `json:"id"`
	}{Execute: cmd, Arguments: args}

	c.mu.Lock()
	if c.closed {
		err := c.readErr
		c.mu.Unlock()
		return fmt.Errorf("qmp %s: %w", cmd, errOrClosed(err))
	}
	c.nextID++
	req.ID = "keel-" + strconv.FormatUint(c.nextID, 10)
	p := &call{id: req.ID, reply: make(chan message, 1)}
	c.pending = append(c.pending, p)
	c.mu.Unlock()

	b, err := json.Marshal(req)
	if err != nil {
		c.forget(p)
		return fmt.Errorf("qmp %s: unable to encode arguments: %w", cmd, err)
	}
	if err := c.write(ctx, append(b, '\n')); err != nil {
		c.forget(p)
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}

	select {
	case m, ok := <-p.reply:
		if !ok {
			return fmt.Errorf("qmp %s: %w", cmd, errOrClosed(c.Err()))
		}
		if m.Error != nil {
			return &Error{Command: cmd, Class: m.Error.Class, Desc: m.Error.Desc}
		}
		if result != nil {
			if err := json.Unmarshal(m.Return, result); err != nil {
				return fmt.Errorf("qmp %s: unable to decode reply: %w", cmd, err)
			}
		}
		return nil
	case <-ctx.Done():
		c.forget(p)
		return fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
}

func errOrClosed(err error) error {
	if err == nil || !errors.Is(err, ErrClosed) {
		return ErrClosed
	}
	return err
}

func (c *Client) forget(p *call) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, q := range c.pending {
		if q == p {
			c.pending = append(c.pending[:i:i], c.pending[i+1:]...)
			return
		}
	}
}

func (c *Client) write(ctx context.Context, b []byte) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetWriteDeadline(dl)
		defer c.conn.SetWriteDeadline(time.Time{})
	}
	if _, err := c.conn.Write(b); err != nil {
		if c.Err() != nil {
			return errOrClosed(c.Err())
		}
		return err
	}
	return nil
}
