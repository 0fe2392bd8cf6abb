// Package outputreader reads a container process's stdout or stderr from
// the agent as an io.Reader, over ReadStdout / ReadStderr requests on a
// connection of its own, without copying the data through a protobuf
// message.
//
// Why: a host runtime that copies output with the generated ttrpc client
// (as Kata's shim does, 32 KiB per ReadStdout) pays, per read, for ttrpc's
// receive goroutine and the hand-off to the caller, a fresh buffer for the
// frame and another for the decoded ReadStreamResponse, and a copy into
// the caller's buffer; with the agent side made cheap (agent/streamread),
// that client was most of the cost (tests/bench/containerbench).
//
// How: the wire is unchanged. A Reader sends the ttrpc request frame the
// generated client would send, byte for byte, on a connection dedicated to
// one stream (so no multiplexing and no goroutine), decodes the reply's
// frame header and protobuf envelope from a small fixed buffer, and reads
// the data bytes straight into the caller's p: no allocation in the
// steady state, and no copy of the data but of the few bytes (at most 14)
// that arrive with the header. Any ttrpc server of grpc.AgentService
// answers it: Keel's agent and Kata's.
//
// Each Reader is a connection of the agent's: Keel's agent serves at most
// 256 (agent/connlimit) and, to make room, closes an idle one (a Reader
// between Reads, no request in flight), whose next Read then fails. A
// Reader blocked in Read waiting for output is never idle.
//
// One request is in flight at a time. Sending the next one while the
// caller still copies the last reply's data (it would be safe: the agent's
// read for it is ordered after the one answered) was measured and dropped:
// no faster in process, from the keel-agent binary or in a VM (slower in
// each, tests/bench). More than one ahead would not be safe: ttrpc servers
// (Keel's and Kata's) answer concurrent requests concurrently, so reads of
// one pipe could overtake each other.
//
// Semantics are the generated client's: a reply with a non-OK status is
// that status's error (status.ErrorProto, as ttrpc's Client.Call returns
// it), empty data is the end of the stream (io.EOF, as Kata's
// readProcessStream maps it). A reply that is not well formed, too large
// for what was asked, or for another stream id is an error that sticks;
// so is the connection failing. A deadline (SetDeadline, ReadContext)
// that expires leaves the Reader where it was: the next Read carries on
// with the same reply.
package outputreader

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"time"
	"unicode/utf8"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/keelvm/keel/protocol/client"
)

// Stream is which output of the process to read.
type Stream uint8

const (
	Stdout Stream = iota // ReadStdout (a terminal's output too)
	Stderr               // ReadStderr
)

func (s Stream) method() string {
	if s == Stderr {
		return "ReadStderr"
	}
	return "ReadStdout"
}

func (s Stream) String() string {
	if s == Stderr {
		return "stderr"
	}
	return "stdout"
}

// Limits.
const (
	// DefaultMaxRead is the largest len one request asks for unless
	// Options.MaxRead says otherwise: the agent holds a buffer of what is
	// asked while it reads.
	DefaultMaxRead = 1 << 20
	// MaxReadLimit is the largest MaxRead: the reply to a read of this
	// many bytes still fits in ttrpc's largest message (4 MiB).
	MaxReadLimit = maxFrame - 64
	// MaxEnvelope is how much a reply may carry besides the data asked
	// for (its status, unknown fields); a larger reply is an error.
	MaxEnvelope = 64 << 10
)

// bufLen is the fixed buffer the frame header and envelope are decoded
// from; an envelope that does not fit (a long status message) is read
// whole into a buffer of its own, bounded by what was asked + MaxEnvelope.
// headerRead is how much the first read of a reply asks for: the header and
// envelopeRead, the envelope before the data of every known server (an
// empty or absent status, the payload's and data's tags and lengths), so
// that only a few data bytes arrive through the fixed buffer; when the
// header comes alone, the next read asks for envelopeRead again.
const (
	bufLen       = 512
	headerRead   = headerLen + envelopeRead
	envelopeRead = 2 + 2*(1+5)
)

// ErrProtocol is wrapped by every error about a reply that breaks ttrpc's
// framing or the messages' encoding.
var ErrProtocol = errors.New("ttrpc protocol error")

// Options tune a Reader.
type Options struct {
	// MaxRead caps the len of one request; 0 is DefaultMaxRead. A Read
	// asks for min(len(p), MaxRead).
	MaxRead int
}

// Reader reads one stream of one process. One goroutine at a time may call
// Read or ReadContext; Close and SetDeadline may be called from any
// goroutine at any time (Close unblocks a Read).
type Reader struct {
	conn        net.Conn
	stream      Stream
	containerID string
	execID      string
	maxRead     int

	req    []byte // the encoding of the last request
	unsent []byte // its part not yet written (a write timed out)
	nextID uint64 // the next request's stream id (odd, as ttrpc's client)

	pending      bool   // a request was sent whose reply has not begun
	pendingID    uint32 // its stream id
	pendingAsked int    // its len

	inFrame bool // a reply's header was taken, its envelope not yet
	bodyLen int  // that reply's body length
	asked   int  // the len that reply answers
	slow    []byte
	slowN   int

	replying bool   // a reply's data is being delivered
	dataLeft int    // its data bytes still in the connection (or buf)
	trail    int    // buffered bytes after the data, dropped with it
	slowData []byte // the data when the envelope went through slow

	dropping bool  // a reply's data is being dropped (non-OK status)
	dropErr  error // what to report once it is

	buf  [bufLen]byte
	r, w int // buf[r:w] is read from the connection, not yet taken

	err error // sticky: the stream ended or the connection is unusable

	mu       sync.Mutex
	deadline time.Time // set by SetDeadline
	// While a ReadContext runs: the connection's deadline is the earlier
	// of deadline and its context's (ctxDeadline, zero for none), and
	// once the context is done (ctxDone) it stays in the past whatever
	// SetDeadline is told.
	inCtx       bool
	ctxDeadline time.Time
	ctxDone     bool
}

// New returns a Reader over conn, a connection to the agent that it now
// owns (Close closes it) and that nothing else may use.
func New(conn net.Conn, s Stream, containerID, execID string, o Options) (*Reader, error) {
	if s != Stdout && s != Stderr {
		return nil, fmt.Errorf("unable to read stream %d: not stdout or stderr", s)
	}
	// The generated client refuses to marshal strings that are not UTF-8.
	if !utf8.ValidString(containerID) {
		return nil, fmt.Errorf("unable to read %s: container_id is not valid UTF-8", s)
	}
	if !utf8.ValidString(execID) {
		return nil, fmt.Errorf("unable to read %s: exec_id is not valid UTF-8", s)
	}
	if len(containerID)+len(execID) > maxFrame/2 {
		return nil, fmt.Errorf("unable to read %s: container_id and exec_id too long", s)
	}
	maxRead := o.MaxRead
	if maxRead == 0 {
		maxRead = DefaultMaxRead
	}
	if maxRead < 0 || maxRead > MaxReadLimit {
		return nil, fmt.Errorf("unable to read %s: MaxRead %d is outside 1..%d", s, o.MaxRead, MaxReadLimit)
	}
	return &Reader{
		conn:        conn,
		stream:      s,
		containerID: containerID,
		execID:      execID,
		maxRead:     maxRead,
		req:         make([]byte, 0, requestCap(s.method(), len(containerID)+len(execID))),
		nextID:      1,
	}, nil
}

// Dial connects to the agent at address (protocol/client's forms: vsock,
// hybrid vsock, unix), retrying until ctx is done, and returns a Reader on
// that connection.
func Dial(ctx context.Context, address string, s Stream, containerID, execID string, o Options) (*Reader, error) {
	conn, err := client.DialConn(ctx, address)
	if err != nil {
		return nil, err
	}
	r, err := New(conn, s, containerID, execID, o)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return r, nil
}

// Close closes the connection; a Read blocked on it returns.
func (r *Reader) Close() error { return r.conn.Close() }

// SetDeadline bounds every Read (the request's write and the reply's
// read) until t; the zero time is no deadline. A Read that meets it
// returns an error for which errors.Is(err, os.ErrDeadlineExceeded) holds.
// Called during a ReadContext, it cannot extend that Read past the
// context's end.
func (r *Reader) SetDeadline(t time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deadline = t
	if r.inCtx {
		if r.ctxDone {
			return nil // the past deadline that ends the Read stays
		}
		t = earlier(t, r.ctxDeadline)
	}
	return r.conn.SetDeadline(t)
}

// earlier is the earlier of two deadlines, the zero time being none.
func earlier(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// testHookCancelled, when set (tests), runs after ReadContext's context
// ended and the connection's deadline was put in the past.
var testHookCancelled func()

// ReadContext is Read bounded by ctx as well: when ctx ends first, it
// returns ctx.Err() (wrapped); the Reader stays usable.
func (r *Reader) ReadContext(ctx context.Context, p []byte) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, r.wrap(err)
	}
	if ctx.Done() == nil {
		return r.Read(p)
	}
	r.mu.Lock()
	r.inCtx, r.ctxDone = true, false
	r.ctxDeadline, _ = ctx.Deadline()
	_ = r.conn.SetDeadline(earlier(r.deadline, r.ctxDeadline))
	r.mu.Unlock()
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		r.mu.Lock()
		r.ctxDone = true
		_ = r.conn.SetDeadline(time.Unix(1, 0)) // in the past: unblock now
		r.mu.Unlock()
		if testHookCancelled != nil {
			testHookCancelled()
		}
	})
	n, err := r.Read(p)
	if !stop() {
		<-fired
	}
	r.mu.Lock()
	r.inCtx, r.ctxDone, r.ctxDeadline = false, false, time.Time{}
	_ = r.conn.SetDeadline(r.deadline)
	r.mu.Unlock()
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		if cerr := ctx.Err(); cerr != nil {
			return n, r.wrap(cerr)
		}
		if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
			return n, r.wrap(context.DeadlineExceeded)
		}
	}
	return n, err
}

// Read reads up to min(len(p), MaxRead) bytes of the stream: the data of
// one reply (or what is left of it), at most. io.EOF is the end of the
// stream; a status error from the agent is returned as the generated
// client returns it.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	n, err := r.read(p)
	if err == nil {
		return n, nil
	}
	if _, isStatus := status.FromError(err); isStatus && !errors.Is(err, os.ErrDeadlineExceeded) {
		return n, err // the agent's answer to this read: the next may differ
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return n, r.wrap(err) // resumable
	}
	if err != io.EOF {
		err = r.wrap(err)
	}
	r.err = err
	return n, err
}

func (r *Reader) wrap(err error) error {
	return fmt.Errorf("unable to read %s of container %q exec %q: %w", r.stream, r.containerID, r.execID, err)
}

func (r *Reader) read(p []byte) (int, error) {
	if r.dropping {
		return 0, r.drop()
	}
	if !r.replying {
		// A reply begun before a deadline expired is still the one to
		// finish: no new request then.
		if !r.pending && !r.inFrame {
			if err := r.request(min(len(p), r.maxRead)); err != nil {
				return 0, err
			}
		}
		if err := r.flush(); err != nil {
			return 0, err
		}
		if err := r.begin(); err != nil {
			return 0, err
		}
	}
	return r.deliver(p)
}

// request encodes the next request, asking for n bytes.
func (r *Reader) request(n int) error {
	if r.nextID > math.MaxUint32 {
		return fmt.Errorf("%w: stream ids exhausted after %d requests: open a new reader", ErrProtocol, math.MaxUint32/2)
	}
	id := uint32(r.nextID)
	r.nextID += 2
	r.req = appendRequest(r.req[:0], id, r.stream.method(), r.containerID, r.execID, uint32(n))
	r.unsent = r.req
	r.pending, r.pendingID, r.pendingAsked = true, id, n
	return nil
}

// flush writes what is left of the last request.
func (r *Reader) flush() error {
	for len(r.unsent) > 0 {
		n, err := r.conn.Write(r.unsent)
		r.unsent = r.unsent[n:]
		if err != nil {
			return connError(err, "sending the request")
		}
	}
	return nil
}

// begin takes the next reply's header and envelope: after it the reply's
// data is ready to deliver, or the reply is done (io.EOF, a status).
func (r *Reader) begin() error {
	if !r.inFrame {
		if err := r.fill(headerLen, headerRead); err != nil {
			return err
		}
		h := r.buf[r.r : r.r+headerLen]
		length := binary.BigEndian.Uint32(h[0:4])
		id := binary.BigEndian.Uint32(h[4:8])
		switch {
		case h[8] != msgTypeResponse:
			return fmt.Errorf("%w: message type %d on stream %d, want a response (%d)", ErrProtocol, h[8], id, msgTypeResponse)
		case id != r.pendingID:
			return fmt.Errorf("%w: a reply on stream %d, want %d", ErrProtocol, id, r.pendingID)
		case length > maxFrame:
			return fmt.Errorf("%w: a reply of %d bytes exceeds ttrpc's largest message (%d)", ErrProtocol, length, maxFrame)
		case int(length) > r.pendingAsked+MaxEnvelope:
			return fmt.Errorf("%w: a reply of %d bytes to a read of %d", ErrProtocol, length, r.pendingAsked)
		}
		r.r += headerLen
		r.inFrame, r.bodyLen, r.asked = true, int(length), r.pendingAsked
		r.pending = false
	}
	var env envelope
	var body []byte
	for r.slow == nil {
		var err error
		env, err = decodeBody(r.buf[r.r:r.w], r.bodyLen)
		if err == nil {
			body = r.buf[r.r:r.w]
			break
		}
		if err != errMore {
			return fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		// More of the envelope: a reply that arrived in pieces (Kata's
		// agent writes the header and the body separately, so a waiting
		// Read often gets the header alone) or a longer envelope. Fill
		// the fixed buffer first, no further than the usual envelope
		// while that is all there is, so that only a few data bytes come
		// through buf; allocate only when buf cannot hold the envelope.
		limit := min(r.bodyLen, len(r.buf))
		have := r.w - r.r
		if have < envelopeRead {
			limit = min(limit, envelopeRead)
		}
		if have < limit {
			if err := r.fill(have+1, limit); err != nil {
				return err
			}
			continue
		}
		// An envelope larger than the fixed buffer (a long status):
		// read the whole body, bounded by the check on its length.
		r.slow = make([]byte, r.bodyLen)
		r.slowN = copy(r.slow, r.buf[r.r:r.w])
		r.r += r.slowN
	}
	if r.slow != nil {
		for r.slowN < len(r.slow) {
			n, err := r.conn.Read(r.slow[r.slowN:])
			r.slowN += n
			if err != nil && r.slowN < len(r.slow) {
				return connError(err, "reading a reply")
			}
		}
		var err error
		if env, err = decodeBody(r.slow, r.bodyLen); err != nil {
			return fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		body = r.slow
	}
	// The status first, as the generated client and Kata's
	// readProcessStream see it: a non-OK status is the answer whatever data
	// comes with it (dropped below; the frame's length is bounded already).
	stErr, err := statusError(body, &env)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	if stErr == nil && env.data.n > r.asked {
		return fmt.Errorf("%w: a reply carries %d bytes of data for a read of %d", ErrProtocol, env.data.n, r.asked)
	}
	r.inFrame = false
	if r.slow != nil {
		data := r.slow[env.data.off : env.data.off+env.data.n]
		r.slow = nil
		switch {
		case stErr != nil:
			return stErr
		case len(data) == 0:
			return io.EOF
		}
		r.replying, r.slowData = true, data
		return nil
	}
	r.r += env.data.off
	r.dataLeft = env.data.n
	r.trail = 0
	if env.complete {
		r.trail = r.bodyLen - env.data.off - env.data.n
	}
	if stErr != nil || env.data.n == 0 {
		r.dropping, r.dropErr = true, stErr
		if stErr == nil {
			r.dropErr = io.EOF
		}
		return r.drop()
	}
	r.replying = true
	return nil
}

// deliver copies the current reply's data into p: the bytes that came
// with the envelope from buf, the rest read from the connection straight
// into p.
func (r *Reader) deliver(p []byte) (int, error) {
	if r.slowData != nil {
		n := copy(p, r.slowData)
		r.slowData = r.slowData[n:]
		if len(r.slowData) == 0 {
			r.slowData, r.replying = nil, false
		}
		return n, nil
	}
	n := copy(p, r.buf[r.r:r.r+min(r.w-r.r, r.dataLeft)])
	r.r += n
	r.dataLeft -= n
	for n < len(p) && r.dataLeft > 0 {
		k, err := r.conn.Read(p[n : n+min(len(p)-n, r.dataLeft)])
		n += k
		r.dataLeft -= k
		if err != nil && r.dataLeft > 0 {
			return n, connError(err, "reading a reply's data")
		}
	}
	if r.dataLeft == 0 {
		r.r += r.trail // a complete body is all in buf
		r.trail = 0
		r.replying = false
	}
	return n, nil
}

// drop discards what is left of a reply that carries no data to deliver,
// then reports why (its status, or io.EOF).
func (r *Reader) drop() error {
	for r.dataLeft > 0 {
		if r.r == r.w {
			r.r, r.w = 0, 0
			n, err := r.conn.Read(r.buf[:min(len(r.buf), r.dataLeft)])
			r.w = n
			if err != nil && n == 0 {
				return connError(err, "reading a reply's data")
			}
		}
		k := min(r.w-r.r, r.dataLeft)
		r.r += k
		r.dataLeft -= k
	}
	r.r += r.trail
	r.trail = 0
	r.dropping = false
	return r.dropErr
}

// fill makes buf hold at least need unread bytes, reading from the
// connection no further than limit bytes past the unread start (limit <=
// len(buf)), so that a reply's data is not pulled through buf.
func (r *Reader) fill(need, limit int) error {
	if r.r == r.w {
		r.r, r.w = 0, 0
	} else if r.r+limit > len(r.buf) {
		r.w = copy(r.buf[:], r.buf[r.r:r.w])
		r.r = 0
	}
	for r.w-r.r < need {
		n, err := r.conn.Read(r.buf[r.w : r.r+limit])
		r.w += n
		if err != nil && r.w-r.r < need {
			return connError(err, "waiting for a reply")
		}
	}
	return nil
}

// connError describes a connection failure while doing what; the end of
// the connection before a reply is complete is io.ErrUnexpectedEOF, never
// the stream's io.EOF.
func connError(err error, what string) error {
	if err == io.EOF {
		return fmt.Errorf("%s: the agent closed the connection: %w", what, io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// statusError is the error the generated client returns for the reply's
// status: nil for none or OK, else status.ErrorProto of the merged status
// fields.
func statusError(body []byte, env *envelope) (error, error) {
	empty := true
	for _, s := range env.status[:env.nStatus] {
		empty = empty && s.n == 0
	}
	if empty {
		return nil, nil
	}
	var st spb.Status
	for _, s := range env.status[:env.nStatus] {
		if err := (proto.UnmarshalOptions{Merge: true}).Unmarshal(body[s.off:s.off+s.n], &st); err != nil {
			return nil, fmt.Errorf("the reply's status: %w", err)
		}
	}
	if st.Code == 0 {
		return nil, nil
	}
	return status.ErrorProto(&st), nil
}
