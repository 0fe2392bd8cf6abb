// Package streamread answers Kata's ReadStdout and ReadStderr on the agent's
// ttrpc connections itself, in front of ttrpc, writing each reply frame
// straight from the buffer the container's output was read into.
//
// Why: Kata's shim copies container output with one ReadStdout of 32 KiB at
// a time, so every 32 KiB costs a full round trip. Through stock ttrpc
// (v1.2) each one took a goroutine hand-off from the connection's reader to
// a handler goroutine and another to the connection's writer, a fresh 32 KiB
// buffer for ttrpc's Response (proto.Marshal copies the payload into it,
// with no hook to avoid it), and two write(2)s (ttrpc's bufio.Writer is 4
// KiB). Measured (agent/stdio BenchmarkStdoutRPCPathAgentSide), the agent
// side spent a third of its CPU collecting and scavenging those buffers.
// Here the data is read from the pipe into a pooled buffer with room in
// front for the whole frame (ttrpc header, Response, ReadStreamResponse),
// the headers are written into that room, the frame goes out in one write,
// and the buffer goes back to the pool: no allocation per read and no
// hand-off to a writer goroutine.
//
// How: Wrap puts a net.Conn between the socket and ttrpc. Its Read follows
// ttrpc's framing; a request frame for grpc.AgentService/ReadStdout or
// ReadStderr that decodes cleanly is taken out of the stream and served
// here (on its own goroutine, since a read may wait for output); every
// other frame, and anything this package does not fully understand, is
// passed to ttrpc byte for byte. Writes from ttrpc and from here never
// interleave within a frame: ttrpc's frames are followed through its
// writes and hold the write turn until they are complete.
//
// The wire format is exactly ttrpc's: the reply frame is byte for byte the
// one ttrpc would send for the same answer (tests/katacompat drives the
// generated client, as Kata's shim uses it, against it; TestFramesMatchTTRPC
// compares the bytes). What changes: stock ttrpc's graceful Shutdown does
// not see a ReadStdout served here as in flight (Close and connection loss
// end it as before, with the request's context).
package streamread

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/protocol/ttrpcframe"
)

// Reader serves the reads; agent/containers implements it.
type Reader interface {
	// ReadStream reads for ReadStdout (stderr false) or ReadStderr into a
	// buffer taken from bufs: headroom spare bytes, then the data. nil
	// with a nil error is the end of the stream; errors are gRPC statuses.
	ReadStream(ctx context.Context, req *pb.ReadStreamRequest, stderr bool, headroom int, bufs Buffers) ([]byte, error)
	// ReadStreamNow is ReadStream for output already waiting: it never
	// blocks, and false means "make the blocking call" (nothing waiting,
	// or something to report other than data).
	ReadStreamNow(req *pb.ReadStreamRequest, stderr bool, headroom int, bufs Buffers) ([]byte, bool)
}

// Buffers is where a Reader takes the buffer it returns (agent/stdio's
// Buffers): Get(n) returns a slice of length n, Put takes back one that
// is no longer used.
type Buffers interface {
	Get(n int) []byte
	Put([]byte)
}

// Observer runs call as one RPC named method (the full ttrpc method name)
// with the accounting every agent RPC gets (agent/server: the cap on
// requests in flight, metrics, logging, panic recovery).
type Observer func(ctx context.Context, method string, call func(context.Context) (any, error)) (any, error)

// Recorder records a request answered at once from the connection's
// reader (metrics, logging), which Observer does for the others.
type Recorder func(ctx context.Context, method string, d time.Duration, err error)

// Config is what Wrap needs.
type Config struct {
	Reader  Reader
	Observe Observer // nil: call directly
	Record  Recorder // nil: nothing recorded
	Log     *slog.Logger
}

// ttrpc framing (its PROTOCOL.md): a 10-byte header (length, stream id,
// type, flags), then length bytes.
const (
	headerLen       = ttrpcframe.HeaderLen
	msgTypeRequest  = 1
	msgTypeResponse = 2
	maxFrame        = 4 << 20 // ttrpc's messageLengthMax
)

// maxRequest is the largest request frame looked into. A ReadStdout request
// is under 200 bytes (ids of up to 64 characters each, some metadata);
// anything larger goes to ttrpc untouched.
const maxRequest = 4 << 10

// Headroom is the room the reader leaves in front of the data for the
// frame's headers: the ttrpc header, the Response's payload tag and length
// (up to 6), the ReadStreamResponse's data tag and length (up to 6).
const Headroom = headerLen + 6 + 6

const (
	service      = "grpc.AgentService"
	methodStdout = "ReadStdout"
	methodStderr = "ReadStderr"
)

// Wrap returns the connection to give ttrpc in place of nc.
func Wrap(nc net.Conn, cfg Config) net.Conn {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Conn{
		Conn:   nc,
		cfg:    cfg,
		br:     bufio.NewReaderSize(nc, 4<<10),
		ctx:    ctx,
		cancel: cancel,
		turn:   make(chan struct{}, 1),
		closed: make(chan struct{}),
	}
}

// Conn is the connection ttrpc sees.
type Conn struct {
	net.Conn
	cfg    Config
	ctx    context.Context // the requests served here; ends with the connection
	cancel context.CancelFunc

	// Read side, used only by ttrpc's (single) reader goroutine.
	br       *bufio.Reader
	hdr      [headerLen]byte
	frame    [headerLen + maxRequest]byte
	pass     []byte // bytes of the current frame to hand to ttrpc
	passBody int    // body bytes still to stream through unread
	lastID   uint32 // highest request stream id seen
	rerr     error

	// Write side. turn is held by whoever writes a frame; ttrpc's writer
	// keeps it from the first byte of a frame to the last, across writes.
	turn     chan struct{}
	ttHolds  bool // under turn, ttrpc's writer only
	wframe   ttrpcframe.Follower
	closed   chan struct{}
	closeMu  sync.Once
	inflight sync.WaitGroup
}

// Read gives ttrpc the connection's bytes minus the frames served here.
func (c *Conn) Read(p []byte) (int, error) {
	for {
		if len(c.pass) > 0 {
			n := copy(p, c.pass)
			c.pass = c.pass[n:]
			return n, nil
		}
		if c.passBody > 0 {
			n, err := c.br.Read(p[:min(len(p), c.passBody)])
			c.passBody -= n
			return n, err
		}
		if c.rerr != nil {
			return 0, c.rerr
		}
		if n, err := io.ReadFull(c.br, c.hdr[:]); err != nil {
			// Hand over what there is; the error follows, as ttrpc would
			// have seen it (io.EOF between frames, ErrUnexpectedEOF or the
			// connection's error within one).
			c.rerr = err
			c.pass = c.hdr[:n]
			continue
		}
		length := binary.BigEndian.Uint32(c.hdr[:4])
		if c.hdr[8] != msgTypeRequest {
			c.pass, c.passBody = c.hdr[:], int(length)
			continue
		}
		// ttrpc wants odd, increasing request ids from a client. It refuses
		// an even id and an oversized frame itself (without counting the
		// id); a reused or decreasing id is refused here, as ttrpc would,
		// since ttrpc does not see the ids served here.
		id := binary.BigEndian.Uint32(c.hdr[4:8])
		if id%2 == 0 || length > maxFrame {
			c.pass, c.passBody = c.hdr[:], int(length)
			continue
		}
		if id <= c.lastID {
			if _, err := c.br.Discard(int(length)); err != nil {
				c.rerr = err
				continue
			}
			c.writeError(id, status.Error(codes.InvalidArgument, "StreamID cannot be re-used and must increment"))
			continue
		}
		c.lastID = id
		if length > maxRequest {
			c.pass, c.passBody = c.hdr[:], int(length)
			continue
		}
		frame := c.frame[:headerLen+int(length)]
		copy(frame, c.hdr[:])
		if n, err := io.ReadFull(c.br, frame[headerLen:]); err != nil {
			c.rerr = err
			c.pass = frame[:headerLen+n]
			continue
		}
		if !c.serve(id, frame[headerLen:]) {
			c.pass = frame
		}
	}
}

// serve starts serving a request frame's body if it is a ReadStdout or
// ReadStderr that decodes cleanly; false leaves it to ttrpc.
func (c *Conn) serve(id uint32, body []byte) bool {
	var req ttrpc.Request
	if proto.Unmarshal(body, &req) != nil || req.Service != service {
		return false
	}
	var stderr bool
	switch req.Method {
	case methodStdout:
	case methodStderr:
		stderr = true
	default:
		return false
	}
	var rs pb.ReadStreamRequest
	if proto.Unmarshal(req.Payload, &rs) != nil {
		return false // ttrpc answers with its own unmarshal error
	}
	method := "/" + service + "/" + req.Method
	if c.answerNow(id, method, &rs, stderr) {
		return true
	}
	ctx, cancel := requestContext(c.ctx, &req)
	c.inflight.Add(1)
	go func() {
		defer c.inflight.Done()
		defer cancel()
		c.answer(ctx, id, method, &rs, stderr)
	}()
	return true
}

// answerNow answers from output already waiting, here on the reader's
// goroutine: no goroutine to start and wake, which is most of what a
// round trip costs when the output keeps coming. False: nothing waiting,
// or something else to report; the request takes the blocking path. The
// reply write may block on a client that does not read its replies: the
// connection then stops reading further requests (backpressure) until it
// drains or connlimit's write timeout closes it.
func (c *Conn) answerNow(id uint32, method string, req *pb.ReadStreamRequest, stderr bool) (ok bool) {
	start := time.Now()
	var buf []byte
	func() {
		defer func() {
			if recover() != nil {
				buf, ok = nil, false // the blocking path meets it again and reports it
			}
		}()
		buf, ok = c.cfg.Reader.ReadStreamNow(req, stderr, Headroom, pool)
	}()
	if !ok {
		return false
	}
	buf = pool.shrink(buf)
	c.writeFrame(EncodeFrame(buf, id))
	pool.Put(buf)
	if c.cfg.Record != nil {
		c.cfg.Record(c.ctx, method, time.Since(start), nil)
	}
	return true
}

// requestContext is the context ttrpc gives a request: its metadata and
// its timeout.
func requestContext(ctx context.Context, req *ttrpc.Request) (context.Context, context.CancelFunc) {
	if len(req.Metadata) > 0 {
		md := ttrpc.MD{}
		for _, kv := range req.Metadata {
			md[kv.Key] = append(md[kv.Key], kv.Value) // keys as sent, as ttrpc does (MD.Append would lowercase them)
		}
		ctx = ttrpc.WithMetadata(ctx, md)
	}
	if req.TimeoutNano == 0 {
		return context.WithCancel(ctx)
	}
	// As ttrpc: any other value is a timeout, a negative one already expired.
	return context.WithTimeout(ctx, time.Duration(req.TimeoutNano))
}

// answer reads and writes the reply to one request. The data reply is
// written inside Observe's accounting, so a read that is done but waits to
// write its reply (for the write turn, or on a client that reads slowly)
// still counts against the agent-wide cap on requests in flight
// (agent/server MaxPendingRequests) while it holds its buffer. An error
// reply is written after (it holds no data).
func (c *Conn) answer(ctx context.Context, id uint32, method string, req *pb.ReadStreamRequest, stderr bool) {
	call := func(ctx context.Context) (any, error) {
		buf, err := c.cfg.Reader.ReadStream(ctx, req, stderr, Headroom, pool)
		if err != nil {
			if buf != nil {
				pool.Put(buf)
			}
			return nil, err
		}
		if buf == nil { // end of stream: an empty ReadStreamResponse
			var empty [Headroom]byte
			c.writeFrame(EncodeFrame(empty[:], id))
			return nil, nil
		}
		c.writeFrame(EncodeFrame(buf, id))
		pool.Put(buf)
		return nil, nil
	}
	var err error
	if c.cfg.Observe != nil {
		_, err = c.cfg.Observe(ctx, method, call)
	} else {
		_, err = call(ctx)
	}
	if err != nil {
		c.writeError(id, err)
	}
}

// EncodeFrame builds, in place, the ttrpc response frame of stream id
// whose payload is a ReadStreamResponse carrying buf[Headroom:]: the
// headers go into the end of buf[:Headroom], and the frame is returned
// (a suffix of buf). The bytes are those ttrpc sends for the same answer
// (an OK Response has no status field; empty data, Kata's end of stream,
// is an empty payload, which proto3 leaves out).
func EncodeFrame(buf []byte, id uint32) []byte {
	data := buf[Headroom:]
	var hdr [Headroom]byte
	h := hdr[:headerLen]
	if len(data) > 0 {
		inner := len(data) + protowire.SizeTag(1) + protowire.SizeVarint(uint64(len(data)))
		h = protowire.AppendTag(h, 2, protowire.BytesType) // Response.payload
		h = protowire.AppendVarint(h, uint64(inner))
		h = protowire.AppendTag(h, 1, protowire.BytesType) // ReadStreamResponse.data
		h = protowire.AppendVarint(h, uint64(len(data)))
	}
	binary.BigEndian.PutUint32(h[0:4], uint32(len(h)-headerLen+len(data)))
	binary.BigEndian.PutUint32(h[4:8], id)
	h[8], h[9] = msgTypeResponse, 0
	start := Headroom - len(h)
	copy(buf[start:], h)
	return buf[start:]
}

// writeError answers with err's status, as ttrpc would.
func (c *Conn) writeError(id uint32, err error) {
	st, ok := status.FromError(err)
	if !ok {
		st = status.FromContextError(err) // Canceled, DeadlineExceeded or Unknown
	}
	p, merr := proto.Marshal(&ttrpc.Response{Status: st.Proto()})
	if merr != nil || len(p) > maxFrame {
		p, _ = proto.Marshal(&ttrpc.Response{Status: status.New(codes.Internal, "unable to encode the error").Proto()})
	}
	frame := make([]byte, headerLen+len(p))
	binary.BigEndian.PutUint32(frame[0:4], uint32(len(p)))
	binary.BigEndian.PutUint32(frame[4:8], id)
	frame[8] = msgTypeResponse
	copy(frame[headerLen:], p)
	c.writeFrame(frame)
}

// writeFrame writes one whole frame between ttrpc's frames. A write error
// leaves the stream broken mid-frame, so the connection is closed.
func (c *Conn) writeFrame(frame []byte) {
	select {
	case c.turn <- struct{}{}:
	case <-c.closed:
		return
	}
	_, err := c.Conn.Write(frame)
	if err != nil {
		// Closed before the turn goes back, so no other writer appends a
		// frame to the half-written one.
		c.cfg.Log.Warn("closing connection: reply write failed", "err", err)
		c.Close()
	}
	<-c.turn
}

// Write is ttrpc's writer: it takes the write turn at the first byte of a
// frame and gives it back after the last.
func (c *Conn) Write(p []byte) (int, error) {
	if !c.ttHolds {
		select {
		case c.turn <- struct{}{}:
			c.ttHolds = true
		case <-c.closed:
			return 0, net.ErrClosed
		}
	}
	n, err := c.Conn.Write(p)
	c.wframe.Feed(p[:n], 0)
	mid := c.wframe.Mid()
	if err != nil && mid {
		// The frame can never be completed: close before the turn goes
		// back, so no other writer appends a frame to the half-written one.
		c.Close()
	}
	if !mid || err != nil {
		c.ttHolds = false
		<-c.turn
	}
	return n, err
}

// Close closes the connection and ends the requests served here.
func (c *Conn) Close() error {
	var err error
	c.closeMu.Do(func() {
		close(c.closed)
		c.cancel()
		err = c.Conn.Close()
	})
	return err
}

// Wait waits until no request served here is running (after Close, they
// end promptly: their context is cancelled).
func (c *Conn) Wait() { c.inflight.Wait() }

// pool holds the read buffers: the reply is written from the buffer, so it
// can go back once the write returned. Sizes are powers of two plus the
// headroom, from 4 KiB to 1 MiB (agent/stdio's MaxReadLen).
var pool = &buffers{}

type buffers struct {
	classes [9]sync.Pool // *[]byte of 4 KiB << i, i = 0..8 (1 MiB)
	// holders are the emptied *[]byte of buffers taken out, reused by Put
	// so that putting a buffer back allocates nothing.
	holders sync.Pool
}

const (
	minClassShift = 12
	slack         = 64 // >= Headroom
)

func class(n int) int {
	for i := range 9 {
		if n <= (1<<(minClassShift+i))+slack {
			return i
		}
	}
	return -1
}

// Get returns a buffer of length n.
func (b *buffers) Get(n int) []byte {
	i := class(n)
	if i < 0 {
		return make([]byte, n)
	}
	if p, ok := b.classes[i].Get().(*[]byte); ok {
		buf := (*p)[:n]
		*p = nil
		b.holders.Put(p)
		return buf
	}
	return make([]byte, n, (1<<(minClassShift+i))+slack)
}

// shrink returns buf's contents in a buffer of the smallest class that
// holds them, giving buf back, when buf is of a larger class: a read that
// took a buffer for the whole len asked (up to 1 MiB) and found a few
// bytes then holds only what it carries while its reply write waits on a
// client that does not read. The copy is of the few bytes only.
func (b *buffers) shrink(buf []byte) []byte {
	need, have := class(len(buf)), class(cap(buf))
	if need < 0 || have <= need {
		return buf
	}
	small := b.Get(len(buf))
	copy(small, buf)
	b.Put(buf)
	return small
}

// Put takes a buffer back; one not of a class size is left to the GC.
func (b *buffers) Put(buf []byte) {
	c := cap(buf)
	i := class(c)
	if i < 0 || c != (1<<(minClassShift+i))+slack {
		return
	}
	p, ok := b.holders.Get().(*[]byte)
	if !ok {
		p = new([]byte)
	}
	*p = buf[:c]
	b.classes[i].Put(p)
}
