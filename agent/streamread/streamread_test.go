package streamread

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	pb "github.com/keelvm/keel/protocol/grpc"
)

// fakeStreams serves ReadStdout/ReadStderr from fixed chunks per
// container id, both as a streamread.Reader and as the generated ttrpc
// handler, so the two paths can be compared on the same answers. Container
// "block" waits until the request's context ends; "err" fails.
type fakeStreams struct {
	pb.AgentServiceService // only the methods below are served

	mu      sync.Mutex
	chunks  map[string][][]byte
	blocked chan struct{} // receives when a read starts waiting
	noNow   bool          // ReadStreamNow never answers
	stdin   [][]byte
}

func (f *fakeStreams) next(ctx context.Context, req *pb.ReadStreamRequest, stderr bool) ([]byte, error) {
	id := req.ContainerId
	if stderr {
		id += "/err"
	}
	switch req.ContainerId {
	case "block":
		if f.blocked != nil {
			f.blocked <- struct{}{}
		}
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	case "err":
		return nil, status.Errorf(codes.NotFound, "container %q: not found", req.ContainerId)
	case "panic":
		panic("boom")
	case "md": // the request's metadata as the handler sees it
		md, _ := ttrpc.GetMetadata(ctx)
		keys := make([]string, 0, len(md))
		for k, v := range md {
			keys = append(keys, k+"="+strings.Join(v, ","))
		}
		sort.Strings(keys)
		return []byte(strings.Join(keys, ";")), nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	q := f.chunks[id]
	if len(q) == 0 {
		return nil, nil // end of stream
	}
	f.chunks[id] = q[1:]
	return q[0], nil
}

func (f *fakeStreams) ReadStream(ctx context.Context, req *pb.ReadStreamRequest, stderr bool, headroom int, bufs Buffers) ([]byte, error) {
	d, err := f.next(ctx, req, stderr)
	if err != nil || d == nil {
		return nil, err
	}
	b := bufs.Get(headroom + len(d))
	copy(b[headroom:], d)
	return b, nil
}

// ReadStreamNow answers at once unless the container is "block", "err" or
// "panic" or the stream is at its end (as agent/containers does).
func (f *fakeStreams) ReadStreamNow(req *pb.ReadStreamRequest, stderr bool, headroom int, bufs Buffers) ([]byte, bool) {
	switch req.ContainerId {
	case "block", "err", "panic", "md":
		return nil, false
	}
	id := req.ContainerId
	if stderr {
		id += "/err"
	}
	f.mu.Lock()
	n := len(f.chunks[id])
	f.mu.Unlock()
	if n == 0 || f.noNow {
		return nil, false
	}
	b, err := f.ReadStream(context.Background(), req, stderr, headroom, bufs)
	return b, err == nil && b != nil
}

// ttrpcOnly hides ReadStream: the generated handlers through stock ttrpc.
type ttrpcOnly struct{ f *fakeStreams }

func (t ttrpcOnly) read(ctx context.Context, req *pb.ReadStreamRequest, stderr bool) (*pb.ReadStreamResponse, error) {
	d, err := t.f.next(ctx, req, stderr)
	if err != nil {
		return nil, err
	}
	return &pb.ReadStreamResponse{Data: d}, nil
}

func (f *fakeStreams) WriteStdin(_ context.Context, req *pb.WriteStreamRequest) (*pb.WriteStreamResponse, error) {
	f.mu.Lock()
	f.stdin = append(f.stdin, bytes.Clone(req.Data))
	f.mu.Unlock()
	return &pb.WriteStreamResponse{Len: uint32(len(req.Data))}, nil
}

func (f *fakeStreams) CloseStdin(context.Context, *pb.CloseStdinRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

// serve runs a ttrpc server with the generated AgentService over f on a
// unix socket, its connections wrapped by Wrap when wrap is set, and
// returns a client connection and a func giving the wrapped server side of
// it (once accepted).
func serve(t *testing.T, f *fakeStreams, wrap bool) (net.Conn, func() *Conn) {
	t.Helper()
	if !wrap {
		return serveWith(t, f, nil)
	}
	return serveWith(t, f, &Config{Reader: f, Observe: recoverPanics})
}

// serveWith is serve with the wrapping Config (nil: not wrapped).
func serveWith(t *testing.T, f *fakeStreams, cfg *Config) (net.Conn, func() *Conn) {
	t.Helper()
	opts := []ttrpc.ServerOpt{ttrpc.WithUnaryServerInterceptor(func(ctx context.Context, um ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, h ttrpc.Method) (any, error) {
		return recoverPanics(ctx, info.FullMethod, func(ctx context.Context) (any, error) { return h(ctx, um) })
	})}
	conns := make(chan *Conn, 1)
	if cfg != nil {
		opts = append(opts, ttrpc.WithServerHandshaker(hs(func(c net.Conn) net.Conn {
			w := Wrap(c, *cfg)
			conns <- w.(*Conn)
			return w
		})))
	}
	srv, err := ttrpc.NewServer(opts...)
	if err != nil {
		t.Fatal(err)
	}
	pb.RegisterAgentServiceService(srv, &generated{f: f})
	l, err := net.Listen("unix", t.TempDir()+"/s")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	t.Cleanup(func() { srv.Close() })
	c, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, func() *Conn {
		t.Helper()
		select {
		case w := <-conns:
			return w
		case <-time.After(10 * time.Second):
			t.Fatal("the server did not accept the connection")
			return nil
		}
	}
}

// recoverPanics is a minimal Observer (and interceptor): a panic becomes
// Internal.
func recoverPanics(ctx context.Context, method string, call func(context.Context) (any, error)) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			resp, err = nil, status.Errorf(codes.Internal, "%s: handler panicked: %v", method, r)
		}
	}()
	return call(ctx)
}

type hs func(net.Conn) net.Conn

func (h hs) Handshake(_ context.Context, c net.Conn) (net.Conn, any, error) { return h(c), nil, nil }

// generated is the generated-handler side of fakeStreams.
type generated struct {
	pb.AgentServiceService
	f *fakeStreams
}

func (g *generated) ReadStdout(ctx context.Context, r *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error) {
	return ttrpcOnly{g.f}.read(ctx, r, false)
}

func (g *generated) ReadStderr(ctx context.Context, r *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error) {
	return ttrpcOnly{g.f}.read(ctx, r, true)
}

func (g *generated) WriteStdin(ctx context.Context, r *pb.WriteStreamRequest) (*pb.WriteStreamResponse, error) {
	return g.f.WriteStdin(ctx, r)
}

func (g *generated) CloseStdin(ctx context.Context, r *pb.CloseStdinRequest) (*emptypb.Empty, error) {
	return g.f.CloseStdin(ctx, r)
}

// requestFrame is a raw ttrpc request frame.
func requestFrame(t *testing.T, id uint32, method string, msg proto.Message) []byte {
	t.Helper()
	p, err := proto.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	body, err := proto.Marshal(&ttrpc.Request{Service: "grpc.AgentService", Method: method, Payload: p})
	if err != nil {
		t.Fatal(err)
	}
	return rawFrame(id, 1, body)
}

func rawFrame(id uint32, typ byte, body []byte) []byte {
	f := make([]byte, headerLen, headerLen+len(body))
	binary.BigEndian.PutUint32(f[0:4], uint32(len(body)))
	binary.BigEndian.PutUint32(f[4:8], id)
	f[8] = typ
	return append(f, body...)
}

// readFrame reads one whole raw frame.
func readFrame(t *testing.T, c net.Conn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	h := make([]byte, headerLen)
	if _, err := io.ReadFull(c, h); err != nil {
		t.Fatalf("reading a frame header: %v", err)
	}
	f := make([]byte, headerLen+int(binary.BigEndian.Uint32(h[:4])))
	copy(f, h)
	if _, err := io.ReadFull(c, f[headerLen:]); err != nil {
		t.Fatalf("reading a frame body: %v", err)
	}
	return f
}

// mibReads is a fakeStreams whose container "c" has n chunks of 1 MiB
// and whose ReadStreamNow never answers, so each read takes the blocking
// path and its reply is written from a goroutine of its own.
func mibReads(n int, seed byte) *fakeStreams {
	big := chunk(1<<20, seed)
	f := &fakeStreams{chunks: map[string][][]byte{"c": {}}, noNow: true}
	for range n {
		f.chunks["c"] = append(f.chunks["c"], big)
	}
	return f
}

// sendMiBReads writes n ReadStdout requests of 1 MiB for container "c"
// (ids 1, 3, 5, ...) without reading the replies.
func sendMiBReads(t *testing.T, c net.Conn, n int) {
	t.Helper()
	for i := range n {
		c.Write(requestFrame(t, uint32(2*i+1), "ReadStdout", &pb.ReadStreamRequest{ContainerId: "c", Len: 1 << 20}))
	}
}

// waitAllTaken waits (10 s at most) until reads took every chunk of
// container id, that is until every one of the reads started.
func (f *fakeStreams) waitAllTaken(t *testing.T, id string, reads int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		f.mu.Lock()
		left := len(f.chunks[id])
		f.mu.Unlock()
		if left == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d reads never started", left, reads)
		}
	}
}

func chunk(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// The reply frames written here are byte for byte those stock ttrpc sends
// for the same answers: data of sizes around the varint boundaries and
// Kata's 32 KiB, the end of stream, an error status, stderr.
func TestFramesMatchTTRPC(t *testing.T) {
	sizes := []int{1, 2, 100, 127, 128, 16383, 16384, 32754, 32768, 1 << 20}
	mk := func() *fakeStreams {
		f := &fakeStreams{chunks: map[string][][]byte{}}
		for i, n := range sizes {
			f.chunks["c"] = append(f.chunks["c"], chunk(n, byte(i)))
		}
		f.chunks["c/err"] = [][]byte{[]byte("to stderr")}
		return f
	}
	type req struct {
		method string
		msg    proto.Message
	}
	var reqs []req
	for range sizes {
		reqs = append(reqs, req{"ReadStdout", &pb.ReadStreamRequest{ContainerId: "c", Len: 1 << 20}})
	}
	reqs = append(reqs,
		req{"ReadStdout", &pb.ReadStreamRequest{ContainerId: "c", Len: 10}}, // end of stream
		req{"ReadStderr", &pb.ReadStreamRequest{ContainerId: "c", Len: 10}},
		req{"ReadStderr", &pb.ReadStreamRequest{ContainerId: "c", Len: 10}},
		req{"ReadStdout", &pb.ReadStreamRequest{ContainerId: "err", Len: 10}},
		req{"ReadStdout", &pb.ReadStreamRequest{ContainerId: "panic", Len: 10}},
	)
	frames := func(wrap bool) [][]byte {
		c, _ := serve(t, mk(), wrap)
		var out [][]byte
		for i, r := range reqs {
			if _, err := c.Write(requestFrame(t, uint32(2*i+1), r.method, r.msg)); err != nil {
				t.Fatal(err)
			}
			out = append(out, readFrame(t, c))
		}
		return out
	}
	want, got := frames(false), frames(true)
	for i := range reqs {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("request %d (%v): frame differs from ttrpc's:\n got %x...\nwant %x...", i, reqs[i].msg, got[i][:min(len(got[i]), 40)], want[i][:min(len(want[i]), 40)])
		}
	}
}

// Through a wrapped connection the generated client (as Kata's shim uses
// it) works unchanged: concurrent ReadStdout/ReadStderr and other RPCs,
// including requests larger than what streamread looks into, all get their
// own answers, intact.
func TestGeneratedClientConcurrent(t *testing.T) {
	const readers, perReader = 8, 40
	f := &fakeStreams{chunks: map[string][][]byte{}}
	for r := range readers {
		for i := range perReader {
			f.chunks[fmt.Sprint("c", r)] = append(f.chunks[fmt.Sprint("c", r)], chunk(1+(r*perReader+i)*131%40000, byte(r)))
			f.chunks[fmt.Sprint("c", r, "/err")] = append(f.chunks[fmt.Sprint("c", r, "/err")], chunk(1+i, byte(r+100)))
		}
	}
	want := map[string][][]byte{}
	for k, v := range f.chunks {
		want[k] = v
	}
	c, _ := serve(t, f, true)
	tc := ttrpc.NewClient(c)
	defer tc.Close()
	agent := pb.NewAgentServiceClient(tc)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 4*readers)
	for r := range readers {
		for _, stderr := range []bool{false, true} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				key := fmt.Sprint("c", r)
				if stderr {
					key += "/err"
				}
				for i := 0; ; i++ {
					req := &pb.ReadStreamRequest{ContainerId: fmt.Sprint("c", r), Len: 1 << 20}
					var resp *pb.ReadStreamResponse
					var err error
					if stderr {
						resp, err = agent.ReadStderr(ctx, req)
					} else {
						resp, err = agent.ReadStdout(ctx, req)
					}
					if err != nil {
						errs <- err
						return
					}
					if len(resp.Data) == 0 {
						if i != perReader {
							errs <- fmt.Errorf("%s: end after %d chunks", key, i)
						}
						return
					}
					if i >= perReader || !bytes.Equal(resp.Data, want[key][i]) {
						errs <- fmt.Errorf("%s: chunk %d differs", key, i)
						return
					}
				}
			}()
		}
		// Something ttrpc serves, with a request larger than maxRequest.
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := chunk(maxRequest+100*r, byte(r))
			resp, err := agent.WriteStdin(ctx, &pb.WriteStreamRequest{ContainerId: "c", Data: d})
			if err != nil || resp.Len != uint32(len(d)) {
				errs <- fmt.Errorf("WriteStdin: %v, %v", resp, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(f.stdin) != readers {
		t.Errorf("WriteStdin reached the handler %d times, want %d", len(f.stdin), readers)
	}
}

// A request streamread does not serve goes to ttrpc as it came: a
// ReadStdout whose payload does not decode gets ttrpc's own error, an even
// stream id gets ttrpc's refusal, a reused id too, an unknown method
// Unimplemented.
func TestLeavesOddRequestsToTTRPC(t *testing.T) {
	f := &fakeStreams{chunks: map[string][][]byte{"c": {[]byte("x"), []byte("y")}}}
	c, _ := serve(t, f, true)
	code := func(frame []byte) codes.Code {
		t.Helper()
		var resp ttrpc.Response
		if err := proto.Unmarshal(frame[headerLen:], &resp); err != nil {
			t.Fatal(err)
		}
		return codes.Code(resp.Status.GetCode())
	}
	bad, _ := proto.Marshal(&ttrpc.Request{Service: "grpc.AgentService", Method: "ReadStdout", Payload: []byte{0x0a, 0x7f}})
	c.Write(rawFrame(1, 1, bad))
	if got := code(readFrame(t, c)); got == codes.OK {
		t.Errorf("undecodable ReadStdout: OK, want an error")
	}
	c.Write(requestFrame(t, 4, "ReadStdout", &pb.ReadStreamRequest{ContainerId: "c", Len: 1}))
	if got := code(readFrame(t, c)); got != codes.InvalidArgument {
		t.Errorf("even stream id: %v, want InvalidArgument", got)
	}
	c.Write(requestFrame(t, 5, "ReadStdout", &pb.ReadStreamRequest{ContainerId: "c", Len: 1}))
	if fr := readFrame(t, c); code(fr) != codes.OK || !bytes.HasSuffix(fr, []byte("x")) {
		t.Errorf("ReadStdout: %x", fr)
	}
	c.Write(requestFrame(t, 5, "ReadStdout", &pb.ReadStreamRequest{ContainerId: "c", Len: 1}))
	if got := code(readFrame(t, c)); got != codes.InvalidArgument {
		t.Errorf("reused stream id: %v, want InvalidArgument", got)
	}
	c.Write(requestFrame(t, 7, "NoSuchMethod", &pb.ReadStreamRequest{}))
	if got := code(readFrame(t, c)); got != codes.Unimplemented {
		t.Errorf("unknown method: %v, want Unimplemented", got)
	}
	if len(f.chunks["c"]) != 1 {
		t.Errorf("%d chunks left, want 1: only the valid ReadStdout read", len(f.chunks["c"]))
	}
}

// Closing the connection ends a ReadStdout that waits for output: its
// context is cancelled and its goroutine returns.
func TestCloseEndsPendingRead(t *testing.T) {
	f := &fakeStreams{blocked: make(chan struct{}, 4)}
	c, lazy := serve(t, f, true)
	for i := range 3 {
		c.Write(requestFrame(t, uint32(2*i+1), "ReadStdout", &pb.ReadStreamRequest{ContainerId: "block", Len: 1 << 30}))
	}
	w := lazy()
	for range 3 {
		select {
		case <-f.blocked:
		case <-time.After(10 * time.Second):
			t.Fatal("the reads did not start")
		}
	}
	c.Close()
	done := make(chan struct{})
	go func() { w.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("pending reads still running 10 s after the client closed")
	}
}

// A client that sends requests and never reads the replies blocks only
// its own connection's writes; the Close of the connection (connlimit's
// write timeout does it in the agent) unblocks the writers. The reads take
// the blocking path (ReadStreamNow off), so each reply is written from a
// goroutine Wait counts: before Close they must still be blocked, after it
// they must return and the client must see the connection closed.
func TestCloseUnblocksWriters(t *testing.T) {
	const reads = 32
	f := mibReads(reads, 1)
	c, lazy := serve(t, f, true)
	sendMiBReads(t, c, reads)
	w := lazy()
	// Every read has started (so every writer is counted) once the chunks
	// are all taken.
	f.waitAllTaken(t, "c", reads)
	done := make(chan struct{})
	go func() { w.Wait(); close(done) }()
	select {
	case <-done:
		t.Fatal("32 MiB of replies written to a client that reads none: the writers were never blocked")
	case <-time.After(300 * time.Millisecond):
	}
	w.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("reply writers still blocked 10 s after Close")
	}
	// The client sees the connection end (after what was already sent).
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, c); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client: %v, want the connection closed", err)
	}
}

func TestEncodeFrameLengths(t *testing.T) {
	for _, n := range []int{0, 1, 127, 128, 16384, 1 << 21} {
		buf := make([]byte, Headroom+n)
		f := EncodeFrame(buf, 9)
		if got := int(binary.BigEndian.Uint32(f[:4])); got != len(f)-headerLen {
			t.Errorf("data %d: header says %d, frame body is %d", n, got, len(f)-headerLen)
		}
		var resp ttrpc.Response
		if err := proto.Unmarshal(f[headerLen:], &resp); err != nil {
			t.Fatalf("data %d: %v", n, err)
		}
		var rs pb.ReadStreamResponse
		if err := proto.Unmarshal(resp.Payload, &rs); err != nil || len(rs.Data) != n {
			t.Errorf("data %d: decoded %d bytes, %v", n, len(rs.Data), err)
		}
	}
}

func TestBuffers(t *testing.T) {
	b := &buffers{}
	for _, n := range []int{0, 1, 4096 + slack, 4096 + slack + 1, 32768 + Headroom, 1<<20 + slack, 1<<20 + slack + 1} {
		buf := b.Get(n)
		if len(buf) != n {
			t.Fatalf("Get(%d) has length %d", n, len(buf))
		}
		b.Put(buf[:0]) // a buffer is taken back whatever its length
	}
	b.Put(make([]byte, 5000)) // not a class size: ignored
	big := b.Get(1 << 20)
	copy(big, "hello")
	small := b.shrink(big[:5])
	if string(small) != "hello" || cap(small) != 4096+slack {
		t.Errorf("shrink of 5 bytes in a 1 MiB buffer: %q, cap %d, want cap %d", small, cap(small), 4096+slack)
	}
	if full := b.Get(40000); cap(b.shrink(full)) != cap(full) {
		t.Errorf("shrink of a buffer of its own class moved it")
	}
	if got := b.Get(4000); cap(got) != 4096+slack {
		t.Errorf("Get(4000) cap %d, want %d", cap(got), 4096+slack)
	}
}
