package passfd

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// headerPort identifies a test connection by a 4-byte big-endian port the
// test host writes first: Unix sockets have no ports, vsock ones do.
func headerPort(c net.Conn) (uint32, error) {
	var b [4]byte
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(b[:]), nil
}

type env struct {
	path string
	l    *Listener
	done chan error
}

func serve(t *testing.T) *env {
	t.Helper()
	path := filepath.Join(t.TempDir(), "passfd")
	nl, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &env{path: path, l: NewListener(nl, headerPort), done: make(chan error, 1)}
	go func() { e.done <- e.l.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-e.done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return e
}

func (e *env) dial(t *testing.T, port uint32) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", e.path)
	if err != nil {
		t.Fatal(err)
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], port)
	if _, err := c.Write(b[:]); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestTakeMatchesPorts(t *testing.T) {
	e := serve(t)
	hosts := map[uint32]net.Conn{}
	for _, p := range []uint32{1001, 1002, 1003} {
		hosts[p] = e.dial(t, p)
	}
	for _, p := range []uint32{1003, 1001, 1002} {
		c, err := e.l.Take(p, 5*time.Second)
		if err != nil {
			t.Fatalf("Take(%d): %v", p, err)
		}
		msg := []byte{byte(p)}
		hosts[p].Write(msg)
		got := make([]byte, 1)
		if _, err := io.ReadFull(c, got); err != nil || got[0] != msg[0] {
			t.Fatalf("port %d connected to the wrong stream: %v %v", p, got, err)
		}
		c.Close()
	}
	if _, err := e.l.Take(1001, 10*time.Millisecond); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Take: %v", err)
	}
}

func TestTakeWaitsForLateConnection(t *testing.T) {
	e := serve(t)
	go func() {
		time.Sleep(100 * time.Millisecond)
		e.dial(t, 42)
	}()
	c, err := e.l.Take(42, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestTakeErrors(t *testing.T) {
	e := serve(t)
	if _, err := e.l.Take(0, time.Second); !errors.Is(err, ErrNotFound) {
		t.Fatalf("port 0: %v", err)
	}
	t0 := time.Now()
	if _, err := e.l.Take(7, 50*time.Millisecond); !errors.Is(err, ErrNotFound) {
		t.Fatalf("absent port: %v", err)
	}
	if time.Since(t0) > 2*time.Second {
		t.Fatal("timeout not honoured")
	}
}

func TestMaxPending(t *testing.T) {
	e := serve(t)
	for i := 1; i <= MaxPending; i++ {
		e.dial(t, uint32(i))
	}
	waitPending(t, e.l, MaxPending)
	extra := e.dial(t, MaxPending+1)
	extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("connection over MaxPending: %v, want EOF (closed)", err)
	}
	if n := e.l.Pending(); n != MaxPending {
		t.Fatalf("pending %d", n)
	}
	if _, err := e.l.Take(1, time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestPendingExpires(t *testing.T) {
	e := serve(t)
	e.l.mu.Lock()
	e.l.ttl = 50 * time.Millisecond
	e.l.mu.Unlock()
	old := e.dial(t, 5)
	waitPending(t, e.l, 1)
	time.Sleep(100 * time.Millisecond)
	e.dial(t, 6) // any arrival sweeps expired connections
	waitPending(t, e.l, 1)
	old.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := old.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("expired connection: %v, want EOF", err)
	}
}

func TestServeStopClosesPending(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p")
	nl, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l := NewListener(nl, headerPort)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.Serve(ctx) }()
	e := &env{path: path, l: l}
	c := e.dial(t, 9)
	waitPending(t, l, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := l.Take(10, time.Minute); !errors.Is(err, ErrClosed) {
			t.Errorf("Take during shutdown: %v", err)
		}
	}()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("pending after stop: %v", err)
	}
}

func TestPeerPortRejectsNonVsock(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := PeerPort(a); err == nil {
		t.Fatal("pipe accepted as vsock")
	}
}

func waitPending(t *testing.T, l *Listener, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for l.Pending() != n {
		if time.Now().After(deadline) {
			t.Fatalf("pending %d, want %d", l.Pending(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
