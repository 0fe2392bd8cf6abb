package stdio

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/tests/unixpair"
)

// unixPair returns the two ends of a connected Unix stream socket, the
// stand-in for a passfd vsock connection (agent end, host end).
func unixPair(t testing.TB) (agent, host *net.UnixConn) {
	t.Helper()
	return unixpair.New(t)
}

// slowReader reads like a slow host: small reads with a pause every MiB.
type slowReader struct {
	r     io.Reader
	n     int
	pause time.Duration
}

func (s *slowReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p[:min(len(p), 32<<10)])
	if s.n/(1<<20) != (s.n+n)/(1<<20) {
		time.Sleep(s.pause)
	}
	s.n += n
	return n, err
}

func TestAttachStdoutLossless(t *testing.T) {
	n := lossless()
	path, want := payloadFile(t, n)
	s := newIO(t, Options{})
	agent, host := unixPair(t)
	start(t, s, "cat", path)
	if err := s.AttachStdout(agent); err != nil {
		t.Fatal(err)
	}
	if err := s.AttachStdout(agent); !errors.Is(err, ErrAttached) {
		t.Fatalf("second attach: %v", err)
	}
	if _, err := s.ReadStdout(ctxT(t, time.Second), 10); !errors.Is(err, ErrAttached) {
		t.Fatalf("ReadStdout on attached stream: %v", err)
	}
	h := sha256.New()
	got, err := io.Copy(h, &slowReader{r: host, pause: 2 * time.Millisecond})
	if err != nil || got != int64(n) || [32]byte(h.Sum(nil)) != want {
		t.Fatalf("host got %d bytes (%v), sha %x; want %d, %x", got, err, h.Sum(nil), n, want)
	}
}

func TestAttachStdinLossless(t *testing.T) {
	n := lossless()
	data, want := payload(n)
	s := newIO(t, Options{Stdin: true})
	agent, host := unixPair(t)
	start(t, s, "sha256sum")
	if err := s.AttachStdin(agent); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(ctxT(t, time.Second), []byte("x")); !errors.Is(err, ErrAttached) {
		t.Fatalf("Write on attached stdin: %v", err)
	}
	go func() {
		host.Write(data)
		host.CloseWrite() // EOF: the agent closes the process's stdin
	}()
	out, err := readAll(ctxT(t, 2*time.Minute), s.ReadStdout, 4096, 0)
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(string(out)); len(f) == 0 || f[0] != hex.EncodeToString(want[:]) {
		t.Fatalf("sha256sum printed %q, want %x", out, want)
	}
}

func TestAttachStdoutGrandchild(t *testing.T) {
	s := newIO(t, Options{})
	agent, host := unixPair(t)
	p := start(t, s, "sh", "-c", "sleep 30 & echo hi; echo oops >&2")
	if err := s.AttachStdout(agent); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	t0 := time.Now()
	host.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(host)
	if err != nil || string(got) != "hi\n" {
		t.Fatalf("host got %q, %v", got, err)
	}
	if d := time.Since(t0); d > ExitGrace+time.Second {
		t.Fatalf("EOF after %v", d)
	}
	// stderr still works through the RPC path.
	if b, _ := readAll(ctxT(t, 5*time.Second), s.ReadStderr, 100, 0); string(b) != "oops\n" {
		t.Fatalf("stderr %q", b)
	}
}

func TestCloseStopsAttachedCopies(t *testing.T) {
	s, err := New(Options{Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	agent, host := unixPair(t)
	agent2, _ := unixPair(t)
	p := start(t, s, "sleep", "30")
	if err := s.AttachStdout(agent); err != nil {
		t.Fatal(err)
	}
	if err := s.AttachStdin(agent2); err != nil {
		t.Fatal(err)
	}
	s.Close() // must stop both copiers and close both connections
	host.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(host); err != nil {
		t.Fatalf("host read after Close: %v", err)
	}
	a3, _ := unixPair(t)
	if err := s.AttachStderr(a3); err == nil {
		t.Fatal("attach after Close accepted")
	}
	p.cmd.Process.Kill()
	<-p.exited
}

// plainConn hides SyscallConn and CloseWrite: the attach copies through
// user space and closes at EOF.
type plainConn struct{ net.Conn }

func TestAttachCopyFallbackLossless(t *testing.T) {
	path, want := payloadFile(t, 16<<20)
	s := newIO(t, Options{})
	agent, host := unixPair(t)
	start(t, s, "cat", path)
	if err := s.AttachStdout(plainConn{agent}); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, &slowReader{r: host, pause: time.Millisecond})
	if err != nil || [32]byte(h.Sum(nil)) != want {
		t.Fatalf("host got %d bytes (%v), sha differs", n, err)
	}
}

// Output of a process that exited long before the attach is all spliced,
// then EOF; both attach paths.
func TestAttachAfterGraceKeepsOutput(t *testing.T) {
	for _, wrap := range []bool{false, true} {
		data, want := payload(60 << 10)
		path := filepath.Join(t.TempDir(), "p")
		writeFile(t, path, data)
		s := newIO(t, Options{})
		p := start(t, s, "sh", "-c", "sleep 30 & cat "+path)
		<-p.exited
		time.Sleep(2 * ExitGrace)
		agent, host := unixPair(t)
		var c net.Conn = agent
		if wrap {
			c = plainConn{agent}
		}
		if err := s.AttachStdout(c); err != nil {
			t.Fatal(err)
		}
		host.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(host)
		if err != nil || sha256.Sum256(got) != want {
			t.Fatalf("wrap=%v: got %d bytes, %v", wrap, len(got), err)
		}
	}
}

// The fast path really splices for a socket: no fallback, every byte moved.
func TestSpliceUsedForSockets(t *testing.T) {
	s := newIO(t, Options{})
	_, w, _ := s.ChildFiles()
	wdup, err := dupFile(w)
	if err != nil {
		t.Fatal(err)
	}
	s.CloseChildSide()
	agent, host := unixPair(t)
	go io.Copy(io.Discard, host)
	go func() {
		wdup.Write(make([]byte, 1<<20))
		wdup.Close()
	}()
	moved, err := s.stdout.spliceTo(ctxT(t, 10*time.Second), agent)
	if !errors.Is(err, io.EOF) || moved != 1<<20 {
		t.Fatalf("spliceTo moved %d, %v; want 1 MiB and EOF", moved, err)
	}
}
