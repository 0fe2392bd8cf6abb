package console

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// gate is a writer that blocks until opened, then records.
type gate struct {
	open chan struct{}
	mu   sync.Mutex
	buf  bytes.Buffer
}

func (g *gate) Write(p []byte) (int, error) {
	<-g.open
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.buf.Write(p)
}

func (g *gate) String() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.buf.String()
}

func TestSinkNeverBlocksAndCountsDrops(t *testing.T) {
	g := &gate{open: make(chan struct{})}
	s := NewSink(g, 100)
	start := time.Now()
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(s, "line %04d\n", i) // 10 bytes
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("writes blocked for %v", d)
	}
	// At most 10 lines queued, plus at most one batch of 10 in the writer.s hands.
	if n := s.Dropped(); n < 980 || n > 990 {
		t.Fatalf("dropped %d", n)
	}
	close(g.open)
	s.Close()
	out := g.String()
	if !strings.Contains(out, "line 0999\n") || !strings.Contains(out, "log lines dropped") {
		t.Fatalf("output:\n%s", out)
	}
	if _, err := s.Write([]byte("x")); err == nil {
		t.Fatal("write after close succeeded")
	}
}

func TestSinkWriterError(t *testing.T) {
	r, w := io.Pipe()
	r.Close()
	s := NewSink(w, 0)
	s.Write([]byte("a\n"))
	select {
	case <-s.Done():
	case <-time.After(time.Second):
		t.Fatal("sink did not stop on writer error")
	}
	if _, err := s.Write([]byte("b")); err == nil {
		t.Fatal("no error after writer failed")
	}
}

func unixListen(t *testing.T) (net.Listener, string) {
	p := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, p
}

func TestStreamReplaysEarlyLogs(t *testing.T) {
	st := NewStream()
	log, lv := NewLogger(slog.LevelInfo, st)
	log.Info("early boot line", "n", 1)
	log.Debug("hidden")
	ln, path := unixListen(t)
	go st.Serve(ln)

	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rd := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := rd.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(line), &rec); err != nil || rec["msg"] != "early boot line" || rec["level"] != "INFO" {
		t.Fatalf("first line %q (%v)", line, err)
	}
	waitFor(t, func() bool { return st.Clients() == 1 })
	lv.Set(slog.LevelDebug)
	log.Debug("live line")
	line, err = rd.ReadString('\n')
	if err != nil || !strings.Contains(line, "live line") {
		t.Fatalf("live %q %v", line, err)
	}
	c.Close()
	waitFor(t, func() bool { return st.Clients() == 0 })
}

func TestStreamSlowReaderDoesNotBlock(t *testing.T) {
	st := NewStream()
	ln, path := unixListen(t)
	go st.Serve(ln)
	c, err := net.Dial("unix", path) // never reads
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, func() bool { return st.Clients() == 1 })
	line := []byte(strings.Repeat("x", 1023) + "\n")
	start := time.Now()
	for i := 0; i < 8192; i++ { // 8 MiB, far more than socket buffers + sink
		st.Write(line)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("writer blocked %v", d)
	}
	waitFor(t, func() bool { return st.Dropped() > 0 })
	// the ring is bounded
	st.mu.Lock()
	if st.bytes > RingBytes {
		t.Errorf("ring holds %d bytes", st.bytes)
	}
	st.mu.Unlock()
}

func TestStreamClientLimit(t *testing.T) {
	st := NewStream()
	ln, path := unixListen(t)
	go st.Serve(ln)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < MaxClients+1; i++ {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	waitFor(t, func() bool { return st.Clients() == MaxClients })
	last := conns[MaxClients]
	last.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := last.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("extra client: %v", err)
	}
}

func TestDebugConsole(t *testing.T) {
	if FindShell() == "" {
		t.Skip("no shell")
	}
	ln, path := unixListen(t)
	done := make(chan error, 1)
	go func() { done <- DebugConsole(ln, "", slog.New(slog.DiscardHandler)) }()
	for i := 0; i < 2; i++ { // two sessions in a row
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "echo hello-$((%d+1)); exit 3\n", i)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		out, _ := io.ReadAll(c)
		if want := fmt.Sprintf("hello-%d", i+1); !strings.Contains(string(out), want) {
			t.Fatalf("session %d output %q, want %q", i, out, want)
		}
		c.Close()
	}
	ln.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("DebugConsole did not return after Close")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not reached")
}

func TestSinkFlush(t *testing.T) {
	g := &gate{open: make(chan struct{})}
	s := NewSink(g, 0)
	s.Write([]byte("a\n"))
	if s.Flush(50 * time.Millisecond) {
		t.Fatal("flush reported done while the writer is blocked")
	}
	close(g.open)
	if !s.Flush(time.Second) || g.String() != "a\n" {
		t.Fatalf("flush: %q", g.String())
	}
}
