package outputreader

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/containerd/ttrpc"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestRequestMatchesGeneratedClient: the request frames are byte for byte
// the generated client's, for both streams, with and without an exec id,
// and successive requests take ttrpc's stream ids (1, 3, 5, ...).
func TestRequestMatchesGeneratedClient(t *testing.T) {
	eof := func(r request) []byte { return frame(r.id, msgTypeResponse, nil) }
	for _, s := range []Stream{Stdout, Stderr} {
		for _, ids := range [][2]string{{"c1", ""}, {"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "exec-é"}, {"", ""}} {
			for _, n := range []int{1, 127, 128, 32 << 10, 1 << 20} {
				t.Run(fmt.Sprintf("%s/%q/%q/%d", s, ids[0], ids[1], n), func(t *testing.T) {
					g, gsrv := generated(t, eof)
					r, rsrv := newReader(t, s, ids[0], ids[1], Options{MaxRead: MaxReadLimit}, eof)
					for range 2 {
						if _, err := generatedRead(context.Background(), g, s, ids[0], ids[1], n); err != io.EOF {
							t.Fatalf("generated client: %v", err)
						}
					}
					if _, err := r.Read(make([]byte, n)); err != io.EOF {
						t.Fatalf("Reader: %v", err)
					}
					// The stream ended: a new reader asks again with id 1;
					// check the second id on the generated side only.
					gr, rr := gsrv.requests(), rsrv.requests()
					if len(gr) != 2 || len(rr) != 1 {
						t.Fatalf("requests: generated %d, reader %d", len(gr), len(rr))
					}
					if !bytes.Equal(gr[0].raw, rr[0].raw) {
						t.Errorf("request frame\n reader    %x\n generated %x", rr[0].raw, gr[0].raw)
					}
					if gr[1].id != 3 {
						t.Errorf("generated client's second id %d", gr[1].id)
					}
					if rr[0].req.Method != s.method() || rr[0].rs.Len != uint32(n) {
						t.Errorf("request %s len %d", rr[0].req.Method, rr[0].rs.Len)
					}
				})
			}
		}
	}
}

// TestStreamIDs: a reader's requests take odd, increasing ids, and a read
// asks for min(len(p), MaxRead).
func TestStreamIDs(t *testing.T) {
	data := bytes.Repeat([]byte("x"), 100)
	r, srv := newReader(t, Stdout, "c", "e", Options{MaxRead: 50}, func(q request) []byte {
		return frame(q.id, msgTypeResponse, responseBody(t, nil, data[:q.rs.Len]))
	})
	p := make([]byte, 100)
	for range 3 {
		if n, err := r.Read(p); n != 50 || err != nil {
			t.Fatalf("Read: %d, %v", n, err)
		}
	}
	for i, q := range srv.requests() {
		if q.id != uint32(2*i+1) || q.rs.Len != 50 {
			t.Errorf("request %d: id %d len %d", i, q.id, q.rs.Len)
		}
	}
}

// TestDataArrivesExactly: pseudo-random chunks of every size up to what
// was asked, read with buffers of several sizes, arrive in order and
// whole, then io.EOF, one request per reply.
func TestDataArrivesExactly(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	want := make([]byte, 3<<20+17)
	for i := range want {
		want[i] = byte(rng.Uint32())
	}
	for _, readLen := range []int{1, 1000, 32 << 10, 100 << 10} {
		t.Run(fmt.Sprintf("read=%d", readLen), func(t *testing.T) {
			want := want
			if readLen < 1000 {
				want = want[:16<<10] // a round trip per byte
			}
			off := 0
			rng := rand.New(rand.NewPCG(3, uint64(readLen)))
			var replies atomic.Int64
			r, srv := newReader(t, Stdout, "c", "", Options{}, func(q request) []byte {
				replies.Add(1)
				n := min(int(q.rs.Len), len(want)-off, 1+rng.IntN(int(q.rs.Len)))
				d := want[off : off+n]
				off += n
				return frame(q.id, msgTypeResponse, responseBody(t, nil, d))
			})
			got, err := readAll(r, readLen)
			if err != io.EOF {
				t.Fatalf("after %d bytes: %v", len(got), err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("got %d bytes, want %d; first difference at %d", len(got), len(want), firstDiff(got, want))
			}
			if _, err := r.Read(make([]byte, 10)); err != io.EOF {
				t.Errorf("Read after EOF: %v", err)
			}
			// Exactly one request per reply: none sent ahead, none lost.
			if n, m := len(srv.requests()), int(replies.Load()); n != m || m < 2 {
				t.Errorf("%d requests for %d replies", n, m)
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestRepliesMatchGeneratedClient: for replies encoded as ttrpc and Kata's
// agent do and in every other way proto allows (unknown fields, fields
// repeated, status fields merged, a status too long for the fixed buffer),
// the Reader returns what the generated client returns: the same data or
// the same status error (code, message, details).
func TestRepliesMatchGeneratedClient(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 100)
	detail, err := anypb.New(&errdetails.ErrorInfo{Reason: "because", Domain: "keel"})
	if err != nil {
		t.Fatal(err)
	}
	tag := func(b []byte, n protowire.Number, typ protowire.Type) []byte { return protowire.AppendTag(b, n, typ) }
	field := func(b []byte, n protowire.Number, v []byte) []byte {
		return protowire.AppendBytes(tag(b, n, protowire.BytesType), v)
	}
	payload := func(d []byte) []byte { return field(nil, readStreamData, d) }
	statusBytes := func(st *spb.Status) []byte {
		b, err := proto.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := map[string][]byte{
		"data":                responseBody(t, nil, data),
		"one byte":            responseBody(t, nil, data[:1]),
		"eof":                 responseBody(t, nil, nil),
		"eof, empty payload":  field(nil, responsePayload, nil),
		"eof, empty data":     field(nil, responsePayload, payload(nil)),
		"empty status + data": field(field(nil, responseStatus, nil), responsePayload, payload(data)),
		"ok status with text": field(field(nil, responseStatus, statusBytes(&spb.Status{Message: "fine"})), responsePayload, payload(data)),
		"not found":           responseBody(t, &spb.Status{Code: int32(codes.NotFound), Message: `container "nope" not found`}, nil),
		"status with details": responseBody(t, &spb.Status{Code: int32(codes.FailedPrecondition), Message: "no", Details: []*anypb.Any{detail}}, nil),
		"long status":         responseBody(t, &spb.Status{Code: int32(codes.Internal), Message: strings.Repeat("long ", 1000)}, nil),
		"status and data":     field(field(nil, responseStatus, statusBytes(&spb.Status{Code: int32(codes.Aborted), Message: "x"})), responsePayload, payload(data)),
		"status after data":   field(field(nil, responsePayload, payload(data)), responseStatus, statusBytes(&spb.Status{Code: int32(codes.Aborted)})),
		"status merged":       field(field(nil, responseStatus, statusBytes(&spb.Status{Code: int32(codes.Aborted)})), responseStatus, statusBytes(&spb.Status{Message: "merged"})),
		"unknown before":      field(protowire.AppendVarint(tag(nil, 9, protowire.VarintType), 300), responsePayload, payload(data)),
		"unknown after data":  protowire.AppendFixed32(tag(field(nil, responsePayload, payload(data)), 7, protowire.Fixed32Type), 5),
		"unknown in payload":  field(nil, responsePayload, field(protowire.AppendFixed64(tag(nil, 5, protowire.Fixed64Type), 1), readStreamData, data)),
		"two payloads":        field(field(nil, responsePayload, payload(data[:10])), responsePayload, payload(data[10:30])),
		"two data fields":     field(nil, responsePayload, append(payload(data[:10]), payload(data[5:600])...)),
		"status wrong type":   field(protowire.AppendVarint(tag(nil, responseStatus, protowire.VarintType), 5), responsePayload, payload(data)),
		// The status is the answer whatever data comes with it, even more
		// than was asked (in the fixed buffer's path and the long one).
		"not found, more data than asked":   field(field(nil, responseStatus, statusBytes(&spb.Status{Code: int32(codes.NotFound), Message: `process "p" not found`})), responsePayload, payload(bytes.Repeat(data, 5))),
		"long status, more data than asked": field(field(nil, responseStatus, statusBytes(&spb.Status{Code: int32(codes.NotFound), Message: strings.Repeat("gone ", 200)})), responsePayload, payload(bytes.Repeat(data, 5))),
		"a group":                           field(protowire.AppendTag(protowire.AppendVarint(tag(tag(nil, 11, protowire.StartGroupType), 1, protowire.VarintType), 1), 11, protowire.EndGroupType), responsePayload, payload(data)),
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			answer := func(q request) []byte { return frame(q.id, msgTypeResponse, body) }
			g, _ := generated(t, answer)
			gdata, gerr := generatedRead(context.Background(), g, Stdout, "c", "", 4096)
			r, _ := newReader(t, Stdout, "c", "", Options{}, answer)
			p := make([]byte, 4096)
			n, err := r.ReadContext(context.Background(), p)
			if gerr != nil && !sameError(err, gerr) {
				t.Fatalf("Reader: %v\ngenerated client: %v", err, gerr)
			}
			if gerr == nil && (err != nil || !bytes.Equal(p[:n], gdata)) {
				t.Fatalf("Reader: %d bytes, %v; generated client: %d bytes", n, err, len(gdata))
			}
			if isStatus(gerr) {
				// A status answers one read: the reply was consumed
				// whole, and the next read is answered afresh.
				if _, err := r.Read(p); !sameError(err, gerr) {
					t.Fatalf("Read after the status: %v, want %v", err, gerr)
				}
			}
			if dec, err := genericDecode(body); !sameError(err, gerr) || !bytes.Equal(dec, gdata) {
				t.Fatalf("test's genericDecode disagrees with the generated client: %v vs %v", err, gerr)
			}
		})
	}
}

// TestBadReplies: replies that break the framing or the encoding, or
// answer another stream, are errors (ErrProtocol, or the connection's end
// as io.ErrUnexpectedEOF), never io.EOF, never a panic; they stick.
func TestBadReplies(t *testing.T) {
	ok := responseBody(t, nil, []byte("hello"))
	// A header announcing more than ttrpc allows, or more than was asked
	// + MaxEnvelope: no buffer of that size is made.
	huge := func(n uint32) func(q request) []byte {
		return func(q request) []byte {
			f := frame(q.id, msgTypeResponse, nil)
			f[0], f[1], f[2], f[3] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
			return f
		}
	}
	cases := []struct {
		name   string
		answer func(q request) []byte
		want   error
	}{
		{"hang up before a reply", func(request) []byte { return nil }, io.ErrUnexpectedEOF},
		{"truncated header", func(q request) []byte { return frame(q.id, msgTypeResponse, ok)[:7] }, io.ErrUnexpectedEOF},
		{"truncated body", func(q request) []byte { return frame(q.id, msgTypeResponse, ok)[:12] }, io.ErrUnexpectedEOF},
		{"truncated data", func(q request) []byte {
			return frame(q.id, msgTypeResponse, responseBody(t, nil, make([]byte, q.rs.Len)))[:500]
		}, io.ErrUnexpectedEOF},
		{"wrong stream id", func(q request) []byte { return frame(q.id+2, msgTypeResponse, ok) }, ErrProtocol},
		{"a request back", func(q request) []byte { return frame(q.id, msgTypeRequest, ok) }, ErrProtocol},
		{"a data message", func(q request) []byte { return frame(q.id, 3, ok) }, ErrProtocol},
		{"over ttrpc's limit", huge(maxFrame + 1), ErrProtocol},
		{"over what was asked", huge(1000 + MaxEnvelope + 1), ErrProtocol},
		{"bad varint", func(q request) []byte {
			return frame(q.id, msgTypeResponse, []byte{0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
		}, ErrProtocol},
		{"field past the frame", func(q request) []byte { return frame(q.id, msgTypeResponse, []byte{0x12, 0x20, 0x0a, 0x1e, 'a'}) }, ErrProtocol},
		{"data past its payload", func(q request) []byte {
			return frame(q.id, msgTypeResponse, []byte{0x12, 0x02, 0x0a, 0x05, 'a', 'b', 'c'})
		}, ErrProtocol},
		{"field number 0", func(q request) []byte { return frame(q.id, msgTypeResponse, []byte{0x02, 0x00}) }, ErrProtocol},
		{"bad status", func(q request) []byte { return frame(q.id, msgTypeResponse, []byte{0x0a, 0x02, 0x08, 0xff}) }, ErrProtocol},
		{"more data than asked", func(q request) []byte {
			return frame(q.id, msgTypeResponse, responseBody(t, nil, make([]byte, q.rs.Len+1)))
		}, ErrProtocol},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, _ := newReader(t, Stdout, "c", "", Options{}, c.answer)
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			n, err := r.Read(make([]byte, 1000))
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			if !errors.Is(err, c.want) || errors.Is(err, io.EOF) {
				t.Fatalf("Read: %d, %v; want %v", n, err, c.want)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 256<<10 {
				t.Errorf("the bad reply cost %d bytes of allocation", grew)
			}
			if _, err2 := r.Read(make([]byte, 1000)); err2 == nil || err2.Error() != err.Error() {
				t.Errorf("the error did not stick: %v, then %v", err, err2)
			}
			t.Log(err)
		})
	}
}

// TestDeadline: a Read meets its deadline (SetDeadline, ReadContext's
// context) with an error and leaves the Reader where it was: once the
// reply comes, the next Read returns it, and no second request was sent.
// Close unblocks a Read.
func TestDeadline(t *testing.T) {
	release := make(chan struct{})
	r, srv := newReader(t, Stdout, "c", "", Options{}, func(q request) []byte {
		<-release
		return frame(q.id, msgTypeResponse, responseBody(t, nil, []byte("late")))
	})
	r.SetDeadline(time.Now().Add(100 * time.Millisecond))
	t0 := time.Now()
	_, err := r.Read(make([]byte, 100))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v", err)
	}
	if d := time.Since(t0); d < 100*time.Millisecond || d > 10*time.Second {
		t.Errorf("Read returned after %v for a 100 ms deadline", d)
	}
	r.SetDeadline(time.Time{})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := r.ReadContext(ctx, make([]byte, 100)); !errors.Is(err, context.Canceled) {
		t.Fatalf("ReadContext with a cancelled context: %v", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := r.ReadContext(ctx, make([]byte, 100)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ReadContext past the context's deadline: %v", err)
	}
	close(release)
	p := make([]byte, 100)
	n, err := r.ReadContext(context.Background(), p)
	if err != nil || string(p[:n]) != "late" {
		t.Fatalf("Read after the deadlines: %q, %v", p[:n], err)
	}
	if n := len(srv.requests()); n != 1 {
		t.Errorf("%d requests sent, want 1", n)
	}

	// Close unblocks a Read waiting for a reply.
	hold := make(chan struct{})
	defer close(hold)
	r2, _ := newReader(t, Stdout, "c", "", Options{}, func(request) []byte { <-hold; return nil })
	errc := make(chan error, 1)
	go func() {
		_, err := r2.Read(make([]byte, 10))
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	r2.Close()
	select {
	case err := <-errc:
		if err == nil || errors.Is(err, io.EOF) {
			t.Errorf("Read on a closed Reader: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not unblock Read")
	}
}

// TestNewRefuses: what the generated client could not send is refused.
func TestNewRefuses(t *testing.T) {
	c, _ := socketPair(t)
	for _, tc := range []struct {
		s        Stream
		cid, eid string
		o        Options
	}{
		{Stream(7), "c", "", Options{}},
		{Stdout, "c\xff", "", Options{}},
		{Stdout, "c", "\xfe", Options{}},
		{Stdout, "c", "", Options{MaxRead: -1}},
		{Stdout, "c", "", Options{MaxRead: MaxReadLimit + 1}},
	} {
		if _, err := New(c, tc.s, tc.cid, tc.eid, tc.o); err == nil {
			t.Errorf("New(%v, %q, %q, %+v) succeeded", tc.s, tc.cid, tc.eid, tc.o)
		}
	}
}

// TestZeroAllocsPerRead: in the steady state a Read allocates nothing,
// (the fake server allocates nothing either: testing.AllocsPerRun counts
// the whole process).
func TestZeroAllocsPerRead(t *testing.T) {
	const n = 32 << 10
	reply := frame(0, msgTypeResponse, responseBody(t, nil, bytes.Repeat([]byte{7}, n)))
	envEnd := len(reply) - n // the header and the envelope before the data
	// Written whole; as Kata's agent writes (ttrpc-rust's write_to: the
	// header, then the body, so a waiting Read often gets the header
	// alone); and cut at every byte of the envelope.
	t.Run("whole", func(t *testing.T) { zeroAllocs(t, reply, 0, 200) })
	t.Run("header then body", func(t *testing.T) { zeroAllocs(t, reply, headerLen, 200) })
	for cut := headerLen + 1; cut <= envEnd; cut++ {
		t.Run(fmt.Sprintf("cut=%d", cut), func(t *testing.T) { zeroAllocs(t, reply, cut, 50) })
	}
}

// zeroAllocs serves reply (its stream id set to each request's) in two
// writes 1 ms apart, cut at cut (0: one write), and checks that Reads of
// the whole data allocate nothing.
func zeroAllocs(t *testing.T, reply []byte, cut, runs int) {
	n := len(reply) - headerLen - 8
	reply = append([]byte(nil), reply...)
	c, sc := socketPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var h [headerLen]byte
		var body [256]byte
		for {
			if _, err := io.ReadFull(sc, h[:]); err != nil {
				return
			}
			l := int(h[3]) | int(h[2])<<8
			if _, err := io.ReadFull(sc, body[:l]); err != nil {
				return
			}
			copy(reply[4:8], h[4:8])
			if cut > 0 {
				if _, err := sc.Write(reply[:cut]); err != nil {
					return
				}
				time.Sleep(time.Millisecond)
			}
			if _, err := sc.Write(reply[cut:]); err != nil {
				return
			}
		}
	}()
	defer func() { sc.Close(); <-done }()
	r, err := New(c, Stdout, "c", "e", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p := make([]byte, n)
	read := func() {
		if k, err := r.Read(p); k != n || err != nil || p[0] != 7 || p[n-1] != 7 {
			t.Fatalf("Read: %d, %v", k, err)
		}
	}
	for range 10 {
		read()
	}
	if a := testing.AllocsPerRun(runs, read); a != 0 {
		t.Errorf("%.2f allocations per Read, want 0", a)
	}
}

// The generated client's own types are what the test's frames are built
// from.
var _ = ttrpc.Response{}

// splitServer answers the first request with reply written in two parts,
// the second once release is closed, and then hangs up after the next
// request. It reports how many requests it saw.
func splitServer(t *testing.T, conn net.Conn, reply func(id uint32) []byte, cut int, release <-chan struct{}) <-chan int {
	seen := make(chan int, 1)
	go func() {
		defer conn.Close()
		n := 0
		defer func() { seen <- n }()
		var h [headerLen]byte
		for {
			if _, err := io.ReadFull(conn, h[:]); err != nil {
				return
			}
			if _, err := io.ReadFull(conn, make([]byte, binary.BigEndian.Uint32(h[:4]))); err != nil {
				return
			}
			n++
			if n > 1 {
				return
			}
			f := reply(binary.BigEndian.Uint32(h[4:8]))
			if _, err := conn.Write(f[:cut]); err != nil {
				return
			}
			<-release
			if _, err := conn.Write(f[cut:]); err != nil {
				return
			}
		}
	}()
	return seen
}

// TestDeadlineMidReply: a deadline met in the middle of a reply (some of
// its header, envelope or data arrived) returns an error, and the next
// Read finishes that same reply: the data is whole and no second request
// went out for it.
func TestDeadlineMidReply(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 64)
	long := &spb.Status{Code: int32(codes.Unavailable), Message: strings.Repeat("x", 900)}
	for _, c := range []struct {
		name string
		st   *spb.Status
		cut  int
	}{{"header", nil, 3}, {"envelope", nil, 12}, {"data", nil, 16}, {"more data", nil, 600}, {"long status", long, 300}} {
		t.Run(c.name, func(t *testing.T) {
			cc, sc := socketPair(t)
			release := make(chan struct{})
			body := responseBody(t, c.st, data)
			seen := splitServer(t, sc, func(id uint32) []byte { return frame(id, msgTypeResponse, body) }, c.cut, release)
			r, err := New(cc, Stdout, "c", "", Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			p := make([]byte, 4096)
			r.SetDeadline(time.Now().Add(100 * time.Millisecond))
			n, err := r.Read(p)
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("Read with the reply cut at %d: %d, %v", c.cut, n, err)
			}
			got := append([]byte(nil), p[:n]...)
			close(release)
			r.SetDeadline(time.Time{})
			for err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				if len(got) == len(data) {
					break
				}
				n, err = r.Read(p)
				got = append(got, p[:n]...)
			}
			if c.st != nil {
				want := genericErr(t, body)
				if !sameError(err, want) {
					t.Fatalf("Read after the deadline: %v, want %v", err, want)
				}
			} else if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("Read after the deadline: %d bytes, %v", len(got), err)
			}
			r.Close()
			if n := <-seen; n != 1 {
				t.Errorf("%d requests for one reply", n)
			}
		})
	}
}

func genericErr(t *testing.T, body []byte) error {
	t.Helper()
	_, err := genericDecode(body)
	return err
}

// segConn is a net.Conn whose reads come from segs in turn, a read never
// spanning two (as a reply written in pieces arrives), and whose writes are
// dropped. It counts the bytes read into buf (the Reader's fixed buffer).
type segConn struct {
	memConn
	segs  [][]byte
	buf   *[bufLen]byte
	inBuf int
}

func (c *segConn) Read(p []byte) (int, error) {
	for len(c.segs) > 0 && len(c.segs[0]) == 0 {
		c.segs = c.segs[1:]
	}
	if len(c.segs) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.segs[0])
	c.segs[0] = c.segs[0][n:]
	start := uintptr(unsafe.Pointer(&c.buf[0]))
	if at := uintptr(unsafe.Pointer(&p[0])); at >= start && at < start+bufLen {
		c.inBuf += n
	}
	return n, nil
}

// TestEnvelopeInPieces: a reply whose header and envelope arrive cut at
// any byte (Kata's agent writes the header and the body apart) is read
// whole, with no more than the usual envelope's few bytes of data passing
// through the fixed buffer: the rest is read straight into p.
func TestEnvelopeInPieces(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 256)
	for _, asked := range []int{len(data), 32 << 10} {
		reply := frame(1, msgTypeResponse, responseBody(t, nil, data))
		envEnd := len(reply) - len(data)
		for cut := 1; cut <= envEnd+1; cut++ {
			for _, pieces := range [][][]byte{
				{reply[:cut], reply[cut:]},
				{reply[:cut], reply[cut : envEnd+2], reply[envEnd+2:]},
			} {
				conn := &segConn{segs: append([][]byte(nil), pieces...)}
				r, err := New(conn, Stdout, "c", "", Options{})
				if err != nil {
					t.Fatal(err)
				}
				conn.buf = &r.buf
				p := make([]byte, asked)
				n, err := r.Read(p)
				if err != nil || !bytes.Equal(p[:n], data) {
					t.Fatalf("cut at %d of %d pieces: %d bytes, %v", cut, len(pieces), n, err)
				}
				if conn.inBuf > headerRead {
					t.Errorf("cut at %d of %d pieces: %d bytes came through the fixed buffer, want at most %d", cut, len(pieces), conn.inBuf, headerRead)
				}
			}
		}
	}
}

// TestSetDeadlineCannotOutliveContext: a SetDeadline during a ReadContext
// neither extends the Read past the context's deadline nor, called just
// after the context ended (the interleaving forced by a hook), revives it.
func TestSetDeadlineCannotOutliveContext(t *testing.T) {
	hold := make(chan struct{})
	defer close(hold)
	r, _ := newReader(t, Stdout, "c", "", Options{}, func(request) []byte { <-hold; return nil })
	later := time.Now().Add(time.Hour)

	// Just after the context ended and the Read was told to stop.
	testHookCancelled = func() { r.SetDeadline(later) }
	defer func() { testHookCancelled = nil }()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if err := readWithin(t, r, ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("ReadContext: %v, want context.Canceled", err)
	}
	testHookCancelled = nil

	// Before: the earlier (the context's) deadline holds.
	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	time.AfterFunc(20*time.Millisecond, func() { r.SetDeadline(later) })
	if err := readWithin(t, r, ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ReadContext: %v, want context.DeadlineExceeded", err)
	}
	// Once the ReadContext is over, SetDeadline's deadline is the
	// connection's again.
	r.SetDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := r.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read: %v, want os.ErrDeadlineExceeded", err)
	}
}

// readWithin is r.ReadContext(ctx), failing the test when it is still
// blocked 10 s on.
func readWithin(t *testing.T, r *Reader, ctx context.Context) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := r.ReadContext(ctx, make([]byte, 10))
		errc <- err
	}()
	select {
	case err := <-errc:
		return err
	case <-time.After(10 * time.Second):
		r.Close()
		<-errc
		t.Fatal("ReadContext still blocked 10 s after its context ended")
		return nil
	}
}
