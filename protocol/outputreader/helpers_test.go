package outputreader

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/unixpair"
)

// socketPair is a connected pair of unix stream sockets: the client's end
// and the fake server's.
func socketPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	server, client := unixpair.New(t)
	return client, server
}

// frame is a ttrpc frame: header and body.
func frame(id uint32, typ byte, body []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	b = binary.BigEndian.AppendUint32(b, id)
	b = append(b, typ, 0)
	return append(b, body...)
}

// responseBody is the body ttrpc's server sends for a reply with this
// status (nil: OK) and data.
func responseBody(t testing.TB, st *spb.Status, data []byte) []byte {
	t.Helper()
	var payload []byte
	if st == nil || st.Code == 0 {
		var err error
		if payload, err = proto.Marshal(&pb.ReadStreamResponse{Data: data}); err != nil {
			t.Fatal(err)
		}
	}
	b, err := proto.Marshal(&ttrpc.Response{Status: st, Payload: payload})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// request is one request frame a fake server received.
type request struct {
	raw []byte
	id  uint32
	req *ttrpc.Request
	rs  *pb.ReadStreamRequest
}

// fakeServer reads request frames from conn and writes what answer
// returns for each (nil: hang up). It records the requests.
type fakeServer struct {
	mu   sync.Mutex
	reqs []request
	done chan struct{}
}

func serve(t testing.TB, conn net.Conn, answer func(r request) []byte) *fakeServer {
	s := &fakeServer{done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer conn.Close()
		for {
			var h [headerLen]byte
			if _, err := io.ReadFull(conn, h[:]); err != nil {
				return
			}
			body := make([]byte, binary.BigEndian.Uint32(h[:4]))
			if _, err := io.ReadFull(conn, body); err != nil {
				return
			}
			r := request{raw: append(h[:], body...), id: binary.BigEndian.Uint32(h[4:8]), req: &ttrpc.Request{}, rs: &pb.ReadStreamRequest{}}
			if err := proto.Unmarshal(body, r.req); err != nil {
				t.Errorf("fake server: request: %v", err)
				return
			}
			if err := proto.Unmarshal(r.req.Payload, r.rs); err != nil {
				t.Errorf("fake server: payload: %v", err)
				return
			}
			s.mu.Lock()
			s.reqs = append(s.reqs, r)
			s.mu.Unlock()
			out := answer(r)
			if out == nil {
				return
			}
			if _, err := conn.Write(out); err != nil {
				return
			}
			if truncatedFrames(out) {
				return // a reply cut short ends with the connection
			}
		}
	}()
	t.Cleanup(func() { conn.Close(); <-s.done })
	return s
}

// truncatedFrames reports whether b's last frame is cut short.
func truncatedFrames(b []byte) bool {
	for len(b) > 0 {
		if len(b) < headerLen {
			return true
		}
		n := headerLen + int(binary.BigEndian.Uint32(b[:4]))
		if n > len(b) {
			return true
		}
		b = b[n:]
	}
	return false
}

func (s *fakeServer) requests() []request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]request(nil), s.reqs...)
}

// newReader returns a Reader on a fresh socket pair whose server end
// answers with answer.
func newReader(t testing.TB, s Stream, cid, eid string, o Options, answer func(r request) []byte) (*Reader, *fakeServer) {
	t.Helper()
	c, sc := socketPair(t)
	srv := serve(t, sc, answer)
	r, err := New(c, s, cid, eid, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, srv
}

// generated returns the generated ttrpc client (Kata's shim's) on a fresh
// socket pair whose server end answers with answer.
func generated(t testing.TB, answer func(r request) []byte) (pb.AgentServiceService, *fakeServer) {
	t.Helper()
	c, sc := socketPair(t)
	srv := serve(t, sc, answer)
	tc := ttrpc.NewClient(c)
	t.Cleanup(func() { tc.Close() })
	return pb.NewAgentServiceClient(tc), srv
}

// generatedRead is what Kata's readProcessStream makes of one ReadStdout
// through the generated client: the data, io.EOF for empty data, or the
// client's error.
func generatedRead(ctx context.Context, a pb.AgentServiceService, s Stream, cid, eid string, n int) ([]byte, error) {
	req := &pb.ReadStreamRequest{ContainerId: cid, ExecId: eid, Len: uint32(n)}
	var resp *pb.ReadStreamResponse
	var err error
	if s == Stderr {
		resp, err = a.ReadStderr(ctx, req)
	} else {
		resp, err = a.ReadStdout(ctx, req)
	}
	if err != nil {
		return nil, err
	}
	if len(resp.Data) == 0 {
		return nil, io.EOF
	}
	return resp.Data, nil
}

// genericDecode decodes a reply body the way the generated client and
// Kata's readProcessStream do, with proto.Unmarshal.
func genericDecode(body []byte) ([]byte, error) {
	var resp ttrpc.Response
	if err := proto.Unmarshal(body, &resp); err != nil {
		return nil, err
	}
	var rs pb.ReadStreamResponse
	if err := proto.Unmarshal(resp.Payload, &rs); err != nil {
		return nil, err
	}
	if resp.Status != nil && resp.Status.Code != 0 {
		return nil, status.ErrorProto(resp.Status)
	}
	if len(rs.Data) == 0 {
		return nil, io.EOF
	}
	return rs.Data, nil
}

// sameError reports whether two errors are the same answer: both nil,
// both io.EOF, or statuses with the same code and text.
func sameError(a, b error) bool {
	if a == nil || b == nil || errors.Is(a, io.EOF) || errors.Is(b, io.EOF) {
		return (a == nil) == (b == nil) && errors.Is(a, io.EOF) == errors.Is(b, io.EOF)
	}
	sa, oka := status.FromError(a)
	sb, okb := status.FromError(b)
	return oka && okb && sa.Code() == sb.Code() && a.Error() == b.Error() && proto.Equal(sa.Proto(), sb.Proto())
}

// memConn is a net.Conn whose reads come from in, at most chunk bytes at a
// time, and whose writes are dropped.
type memConn struct {
	in    []byte
	chunk int
}

func (c *memConn) Read(p []byte) (int, error) {
	if len(c.in) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.chunk)], c.in)
	c.in = c.in[n:]
	return n, nil
}

func (c *memConn) Write(p []byte) (int, error)        { return len(p), nil }
func (c *memConn) Close() error                       { return nil }
func (c *memConn) LocalAddr() net.Addr                { return &net.UnixAddr{Name: "mem"} }
func (c *memConn) RemoteAddr() net.Addr               { return &net.UnixAddr{Name: "mem"} }
func (c *memConn) SetDeadline(t time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(t time.Time) error { return nil }

// readAll reads r until an error, in reads of n bytes.
func readAll(r *Reader, n int) ([]byte, error) {
	var out []byte
	p := make([]byte, n)
	for {
		k, err := r.Read(p)
		out = append(out, p[:k]...)
		if err != nil {
			return out, err
		}
	}
}

var _ = os.ErrDeadlineExceeded
