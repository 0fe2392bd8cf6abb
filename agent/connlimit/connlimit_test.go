package connlimit

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	pb "github.com/keelvm/keel/protocol/grpc"
)

// health serves grpc.Health; Check answers at once, Version blocks until
// its context ends (a request that stays pending, like GetOOMEvent).
type health struct{}

func (health) Check(context.Context, *pb.CheckRequest) (*pb.HealthCheckResponse, error) {
	return &pb.HealthCheckResponse{Status: pb.HealthCheckResponse_SERVING}, nil
}

func (health) Version(ctx context.Context, _ *pb.CheckRequest) (*pb.VersionCheckResponse, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// serve runs a ttrpc server with grpc.Health behind a limited listener.
func serve(t *testing.T, o Options) (*Listener, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l := Wrap(ln, o)
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	pb.RegisterHealthService(srv, health{})
	go srv.Serve(context.Background(), l)
	t.Cleanup(func() { srv.Close() })
	return l, sock
}

// client is one connection with its ttrpc client (one per connection).
type client struct {
	net.Conn
	h pb.HealthService
}

func dial(t *testing.T, sock string) *client {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{Conn: c, h: pb.NewHealthClient(ttrpc.NewClient(c))}
}

// check runs Health.Check on c within d.
func check(c *client, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_, err := c.h.Check(ctx, &pb.CheckRequest{})
	return err
}

// pend starts a request that stays pending until ctx ends.
func pend(ctx context.Context, c *client) {
	go c.h.Version(ctx, &pb.CheckRequest{})
}

// waitOpen waits until the listener has accepted n connections.
func waitOpen(t *testing.T, l *Listener, n int64) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); l.Stats().Open+l.Stats().Evicted+l.Stats().Refused < n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("accepted %+v, want %d", l.Stats(), n)
		}
	}
}

// closedByServer reports whether the server closed c within d: the
// connection's ttrpc client then fails its calls with ErrClosed.
func closedByServer(c *client, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if err := check(c, 200*time.Millisecond); errors.Is(err, ttrpc.ErrClosed) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func TestMaxConnsFromBudget(t *testing.T) {
	for _, tc := range []struct {
		want   int
		nofile uint64
		got    int
	}{
		{256, 0, 256}, {256, 1 << 20, 256}, {256, 1024, 256}, {256, 600, 600 - FDReserve}, {256, 100, 1},
	} {
		if got := MaxConns(tc.want, tc.nofile); got != tc.got {
			t.Errorf("MaxConns(%d, %d) = %d, want %d", tc.want, tc.nofile, got, tc.got)
		}
	}
}

// At the cap, a new connection evicts the idle one least recently active;
// connections with a request pending are never evicted.
func TestEvictsOldestIdleKeepsBusy(t *testing.T) {
	l, sock := serve(t, Options{MaxConns: 3})
	busy := dial(t, sock)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pend(ctx, busy)
	waitOpen(t, l, 1)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, idle := firstConn(l).idle(); !idle {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("pending request not seen")
		}
	}
	idleOld := dial(t, sock)
	waitOpen(t, l, 2)
	time.Sleep(10 * time.Millisecond)
	idleNew := dial(t, sock)
	if err := check(idleNew, 5*time.Second); err != nil { // used, so more recently active
		t.Fatal(err)
	}
	fresh := dial(t, sock) // the cap (3) is reached: idleOld goes
	if err := check(fresh, time.Second); err != nil {
		t.Fatalf("new client at the cap: %v", err)
	}
	if !closedByServer(idleOld, 2*time.Second) {
		t.Fatal("the oldest idle connection was not evicted")
	}
	if st := l.Stats(); st.Evicted != 1 || st.Open != 3 {
		t.Fatalf("stats %+v, want 1 evicted, 3 open", st)
	}
	// The busy connection is still served.
	if err := check(busy, 5*time.Second); err != nil {
		t.Fatalf("busy connection: %v", err)
	}
}

func firstConn(l *Listener) *conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.conns {
		return c
	}
	return nil
}

// With every connection busy, a new one is refused and the busy ones stay.
func TestRefusesWhenAllBusy(t *testing.T) {
	l, sock := serve(t, Options{MaxConns: 2})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var busy []*client
	for range 2 {
		c := dial(t, sock)
		busy = append(busy, c)
		pend(ctx, c)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		n := 0
		l.mu.Lock()
		for c := range l.conns {
			if _, idle := c.idle(); !idle {
				n++
			}
		}
		l.mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("pending requests not seen")
		}
	}
	extra := dial(t, sock)
	if !closedByServer(extra, 5*time.Second) {
		t.Fatal("a connection beyond the cap with all busy was not refused")
	}
	if st := l.Stats(); st.Refused != 1 || st.Evicted != 0 {
		t.Fatalf("stats %+v", st)
	}
	for _, c := range busy {
		if err := check(c, 5*time.Second); err != nil {
			t.Fatalf("busy connection after the refusal: %v", err)
		}
	}
}

// A connection that sent half a frame is closed after FrameTimeout; one
// that streams whole frames for longer than that is not.
func TestHalfSentFrameTimesOut(t *testing.T) {
	l, sock := serve(t, Options{FrameTimeout: 300 * time.Millisecond})
	slow, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	var hdr [headerLen]byte
	binary.BigEndian.PutUint32(hdr[:4], 100)
	binary.BigEndian.PutUint32(hdr[4:8], 1)
	hdr[8] = msgTypeRequest
	slow.Write(hdr[:])
	slow.Write([]byte("partial"))
	start := time.Now()
	slow.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := slow.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, unix.ECONNRESET) {
		t.Fatalf("half-sent frame: %v after %v, want closed by the server", err, time.Since(start))
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("closed after %v, before FrameTimeout", d)
	}
	if st := l.Stats(); st.FrameTimeouts != 1 {
		t.Fatalf("stats %+v", st)
	}
	busy := dial(t, sock)
	for end := time.Now().Add(time.Second); time.Now().Before(end); {
		if err := check(busy, 2*time.Second); err != nil {
			t.Fatalf("a client sending whole frames was cut: %v", err)
		}
	}
}

// accept(2) out of descriptors evicts the oldest idle connection.
func TestEMFILEEvictsIdle(t *testing.T) {
	ln := &emfileListener{conns: make(chan net.Conn, 4), emfile: make(chan struct{}, 1)}
	l := Wrap(ln, Options{MaxConns: 10})
	a, b := net.Pipe()
	defer b.Close()
	ln.conns <- a
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ln.emfile <- struct{}{}
	a2, b2 := net.Pipe()
	defer b2.Close()
	ln.conns <- a2
	if _, err := l.Accept(); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Evicted != 1 {
		t.Fatalf("stats %+v, want the idle connection evicted on EMFILE", st)
	}
	b.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := b.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("evicted connection: %v", err)
	}
}

type emfileListener struct {
	net.Listener
	conns  chan net.Conn
	emfile chan struct{}
}

func (e *emfileListener) Accept() (net.Conn, error) {
	select {
	case <-e.emfile:
		return nil, &net.OpError{Op: "accept", Err: unix.EMFILE}
	default:
	}
	return <-e.conns, nil
}

func (e *emfileListener) Close() error { return nil }

// With MaxPending requests awaiting replies, the connection is not read
// further until one is answered: the next request waits, then is served.
func TestPendingCapBackpressure(t *testing.T) {
	_, sock := serve(t, Options{MaxPending: 2})
	c := dial(t, sock)
	for range 2 { // pending until their 700 ms deadline ends them
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
			defer cancel()
			c.h.Version(ctx, &pb.CheckRequest{})
		}()
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	if err := check(c, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Fatalf("third request answered after %v while 2 (MaxPending) were pending", d)
	}
	// Another connection is not held back. c's requests stay pending until
	// the test ends, so a held-back connection would never answer: a
	// generous deadline suffices (a 500 ms bound was a CI flake risk).
	other := dial(t, sock)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pend(ctx, c)
	pend(ctx, c)
	time.Sleep(100 * time.Millisecond)
	start = time.Now()
	if err := check(other, 5*time.Second); err != nil {
		t.Fatalf("other connection: %v after %v", err, time.Since(start))
	}
}

// The frame clock counts only time the reader waits in Read: a reader that
// got half a frame and then spent longer than FrameTimeout elsewhere (in
// agent/streamread, writing a reply to a client that reads it late) still
// gets the rest, which the client sent meanwhile. Before, the deadline ran
// from the frame's first byte and this Read failed with a frame timeout.
func TestFrameClockExcludesTimeOutsideRead(t *testing.T) {
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	l := Wrap(ln, Options{FrameTimeout: 300 * time.Millisecond})
	defer l.Close()
	cl, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	frame := make([]byte, headerLen+100)
	binary.BigEndian.PutUint32(frame[:4], 100)
	binary.BigEndian.PutUint32(frame[4:8], 1)
	frame[8] = msgTypeRequest
	cl.Write(frame[:headerLen+5])
	buf := make([]byte, 4096)
	n, err := sc.Read(buf)
	if err != nil || n != headerLen+5 {
		t.Fatalf("first read: %d, %v", n, err)
	}
	cl.Write(frame[headerLen+5:])
	time.Sleep(900 * time.Millisecond) // the reader busy elsewhere, 3x FrameTimeout
	if n, err := io.ReadFull(sc, buf[:95]); err != nil {
		t.Fatalf("rest of a frame the client sent in time: %d bytes, %v", n, err)
	}
	if st := l.Stats(); st.FrameTimeouts != 0 {
		t.Fatalf("stats %+v", st)
	}
	// The clock still runs while the reader waits: half a frame left
	// unfinished times out.
	cl.Write(frame[:headerLen+5])
	start := time.Now()
	if _, err := io.ReadFull(sc, buf[:100]); err == nil {
		t.Fatal("half a frame was never finished, yet the read succeeded")
	}
	if d := time.Since(start); d < 250*time.Millisecond || l.Stats().FrameTimeouts != 1 {
		t.Fatalf("half frame: closed after %v, stats %+v", d, l.Stats())
	}
}
