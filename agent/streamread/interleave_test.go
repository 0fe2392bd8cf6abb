package streamread

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"

	pb "github.com/keelvm/keel/protocol/grpc"
)

// ttrpc writes a reply larger than its 4 KiB bufio.Writer in several
// writes; the frame must keep the write turn across all of them while
// replies written here (from their own goroutines: ReadStreamNow is off)
// wait. One stream's requests carry an ExecId longer than maxRequest, so
// they go to ttrpc's generated handler; the other's are served here; both
// get ~20 KB replies, two readers each, concurrently, and every chunk must
// arrive once and intact. A turn given back between ttrpc's writes
// corrupts the stream (the client then fails or hangs until the deadline).
func TestLargeTTRPCRepliesInterleaveWithServed(t *testing.T) {
	const n = 150
	f := &fakeStreams{chunks: map[string][][]byte{}, noNow: true}
	// Chunk lengths differ, so a reply's length says which chunk it is.
	base := map[string]int{"here": 20000, "ttrpc": 21000}
	for i := range n {
		for id, b := range base {
			f.chunks[id] = append(f.chunks[id], chunk(b+i, byte(b)))
		}
	}
	var mu sync.Mutex
	seen := map[string][]bool{"here": make([]bool, n), "ttrpc": make([]bool, n)}
	check := func(id string, d []byte) error {
		i := len(d) - base[id]
		if i < 0 || i >= n || !bytes.Equal(d, chunk(base[id]+i, byte(base[id]))) {
			return fmt.Errorf("%s: a reply of %d bytes is not a chunk sent", id, len(d))
		}
		mu.Lock()
		defer mu.Unlock()
		if seen[id][i] {
			return fmt.Errorf("%s: chunk %d came twice", id, i)
		}
		seen[id][i] = true
		return nil
	}
	c, _ := serve(t, f, true)
	tc := ttrpc.NewClient(c)
	defer tc.Close()
	agent := pb.NewAgentServiceClient(tc)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for id := range base {
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req := &pb.ReadStreamRequest{ContainerId: id, Len: 1 << 20}
				if id == "ttrpc" {
					req.ExecId = strings.Repeat("x", maxRequest+10)
				}
				for {
					r, err := agent.ReadStdout(ctx, req)
					if err != nil {
						errs <- fmt.Errorf("%s: %v", id, err)
						return
					}
					if len(r.Data) == 0 {
						return
					}
					if err := check(id, r.Data); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for id, s := range seen {
		for i, ok := range s {
			if !ok {
				t.Errorf("%s: chunk %d never arrived", id, i)
			}
		}
	}
}

// A read that is done but cannot write its reply yet (the client does not
// read) stays inside Observe, so agent/server's cap on requests in flight
// counts it (and the buffer it holds) until the reply is out. Before, the
// slot was given back when the read returned, before the write: here all 8
// reads were done and none counted.
func TestObserveCoversReplyWrite(t *testing.T) {
	const reads = 8
	f := mibReads(reads, 5)
	var inside atomic.Int64
	observe := func(ctx context.Context, method string, call func(context.Context) (any, error)) (any, error) {
		inside.Add(1)
		defer inside.Add(-1)
		return call(ctx)
	}
	c, lazy := serveWith(t, f, &Config{Reader: f, Observe: observe})
	sendMiBReads(t, c, reads)
	w := lazy()
	defer w.Close()
	f.waitAllTaken(t, "c", reads)
	time.Sleep(200 * time.Millisecond) // let the writes that fit in the socket buffer finish
	// A unix socket buffers well under 2 MiB: at least 6 replies still wait.
	if n := inside.Load(); n < reads-2 {
		t.Fatalf("%d requests counted in flight with %d MiB of replies unwritten; want >= %d", n, reads, reads-2)
	}
	// Reading the replies releases them.
	for range reads {
		readFrame(t, c)
	}
	for deadline := time.Now().Add(10 * time.Second); inside.Load() != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests still counted after every reply was read", inside.Load())
		}
	}
}

// The request's context is the one ttrpc gives its handlers: metadata keys
// as sent (ttrpc does not lowercase them; MD.Append would), repeated keys
// kept in order, and a negative timeout already expired (ttrpc's
// context.WithTimeout; it used to mean no timeout here, and the read
// waited for ever). Both answers are compared with stock ttrpc's.
func TestRequestContextMatchesTTRPC(t *testing.T) {
	send := func(wrap bool, id uint32, req *ttrpc.Request) []byte {
		c, _ := serve(t, &fakeStreams{}, wrap)
		body, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(rawFrame(id, 1, body))
		return readFrame(t, c)
	}
	payload := func(id string) []byte {
		p, err := proto.Marshal(&pb.ReadStreamRequest{ContainerId: id, Len: 10})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	md := &ttrpc.Request{Service: "grpc.AgentService", Method: "ReadStdout", Payload: payload("md"),
		Metadata: []*ttrpc.KeyValue{{Key: "Trace-ID", Value: "a"}, {Key: "x", Value: "1"}, {Key: "x", Value: "2"}}}
	expired := &ttrpc.Request{Service: "grpc.AgentService", Method: "ReadStdout", Payload: payload("block"), TimeoutNano: -1}
	for name, req := range map[string]*ttrpc.Request{"metadata": md, "negative timeout": expired} {
		want, got := send(false, 1, req), send(true, 1, req)
		if !bytes.Equal(got, want) {
			t.Errorf("%s: reply %q, ttrpc's %q", name, got[headerLen:], want[headerLen:])
		}
	}
	if got := send(true, 1, md); !bytes.HasSuffix(got, []byte("Trace-ID=a;x=1,2")) {
		t.Errorf("metadata seen by the reader: %q", got[headerLen:])
	}
}

// halfWriter is a socket whose first write sends half the bytes and fails;
// it notes any write that reaches it after that while it is still open
// (a frame appended to a half-written one).
type halfWriter struct {
	net.Conn // nil: only Write and Close are used
	mu       sync.Mutex
	broken   bool
	closed   bool
	appended bool
	started  chan struct{}
	release  chan struct{}
}

func (h *halfWriter) Write(p []byte) (int, error) {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return 0, net.ErrClosed
	}
	if h.broken {
		h.appended = true
		h.mu.Unlock()
		return len(p), nil
	}
	h.broken = true
	h.mu.Unlock()
	close(h.started)
	<-h.release
	return len(p) / 2, errors.New("connection broke")
}

func (h *halfWriter) Close() error {
	time.Sleep(2 * time.Millisecond) // a close that takes a moment
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	return nil
}

// A reply write that fails half way closes the connection before the next
// writer gets the write turn: nothing is written after a half frame.
func TestFailedWriteClosesBeforeNextWriter(t *testing.T) {
	for range 20 {
		h := &halfWriter{started: make(chan struct{}), release: make(chan struct{})}
		c := Wrap(h, Config{Reader: &fakeStreams{}, Log: slog.New(slog.DiscardHandler)}).(*Conn)
		first := make(chan struct{})
		go func() { c.writeFrame(EncodeFrame(make([]byte, Headroom+100), 1)); close(first) }()
		<-h.started
		second := make(chan struct{})
		go func() { c.writeFrame(EncodeFrame(make([]byte, Headroom+100), 3)); close(second) }()
		time.Sleep(time.Millisecond) // the second writer waits for the turn
		close(h.release)
		<-first
		<-second
		if h.appended {
			t.Fatal("a frame was written after a half-written one, on the open connection")
		}
	}
}

// fullLen answers ReadStreamNow as agent/stdio does: a buffer taken for the
// whole len asked, holding the few bytes the pipe had.
type fullLen struct{ fakeStreams }

func (*fullLen) ReadStreamNow(req *pb.ReadStreamRequest, _ bool, headroom int, bufs Buffers) ([]byte, bool) {
	b := bufs.Get(headroom + int(req.Len))
	copy(b[headroom:], "hello")
	return b[:headroom+5], true
}

// capConn records the capacity behind each write.
type capConn struct {
	net.Conn
	caps []int
}

func (c *capConn) Write(p []byte) (int, error) {
	c.caps = append(c.caps, cap(p))
	return len(p), nil
}

// A reply answered at once from a 1 MiB buffer that holds 5 bytes is
// written from a buffer of the smallest class: while the write waits on a
// client that reads slowly, the memory it pins is what was read (4 KiB
// class), not what was asked (1 MiB). (Done by b220af5; this holds it.)
func TestShortNowAnswerPinsSmallBuffer(t *testing.T) {
	cc := &capConn{}
	c := Wrap(cc, Config{Reader: &fullLen{}, Log: slog.New(slog.DiscardHandler)}).(*Conn)
	if !c.answerNow(1, "/grpc.AgentService/ReadStdout", &pb.ReadStreamRequest{ContainerId: "c", Len: 1 << 20}, false) {
		t.Fatal("not answered")
	}
	if len(cc.caps) != 1 || cc.caps[0] > 4<<10+slack {
		t.Fatalf("reply written from buffers of capacity %v, want one of at most %d", cc.caps, 4<<10+slack)
	}
}
