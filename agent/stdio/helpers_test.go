package stdio

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var long = flag.Bool("long", false, "run the 1 GiB lossless tests")

// lossless is the size moved by the default lossless tests; -long uses 1 GiB.
func lossless() int {
	if *long {
		return 1 << 30
	}
	return 64 << 20
}

// payload returns n deterministic pseudo-random bytes and their sha256.
func payload(n int) ([]byte, [32]byte) {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{'k', 'e', 'e', 'l'})
	r.Read(b)
	return b, sha256.Sum256(b)
}

// payloadFile writes payload(n) to a temp file for cat.
func payloadFile(t testing.TB, n int) (string, [32]byte) {
	b, sum := payload(n)
	p := filepath.Join(t.TempDir(), "payload")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, sum
}

// fdCount counts this process's open descriptors.
func fdCount(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// checkFds fails the test if descriptors leaked since baseline. Closing is
// synchronous, but the runtime may briefly hold a duplicate, so poll.
func checkFds(t testing.TB, baseline int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		n := fdCount(t)
		if n <= baseline {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("fd leak: %d open, baseline %d", n, baseline)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// proc is a child process wired to an IO the way the container code wires
// libcontainer: child files in, CloseChildSide after start, ProcessExited
// after the reap.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	status error
}

func start(t testing.TB, s *IO, name string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = ifNil(s.ChildFiles())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.CloseChildSide()
	p := &proc{cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.status = cmd.Wait()
		s.ProcessExited()
		close(p.exited)
	}()
	t.Cleanup(func() {
		// Kill the whole group: background grandchildren too.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	})
	return p
}

// ifNil keeps exec.Cmd from seeing typed-nil *os.File values.
func ifNil(in, out, errf *os.File) (io.Reader, io.Writer, io.Writer) {
	var r io.Reader
	var w, e io.Writer
	if in != nil {
		r = in
	}
	if out != nil {
		w = out
	}
	if errf != nil {
		e = errf
	}
	return r, w, e
}

// readAll drains a stream through the RPC-shaped API with reads of n bytes,
// sleeping pause after every MiB to play a slow host.
func readAll(ctx context.Context, read func(context.Context, int) ([]byte, error), n int, pause time.Duration) ([]byte, error) {
	var buf bytes.Buffer
	next := 1 << 20
	for {
		b, err := read(ctx, n)
		if errors.Is(err, io.EOF) {
			return buf.Bytes(), nil
		}
		if err != nil {
			return buf.Bytes(), err
		}
		if len(b) == 0 {
			return buf.Bytes(), errors.New("empty read without EOF")
		}
		buf.Write(b)
		if buf.Len() >= next {
			next += 1 << 20
			time.Sleep(pause)
		}
	}
}

func newIO(t testing.TB, o Options) *IO {
	t.Helper()
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func writeFileErr(path string, b []byte) error { return os.WriteFile(path, b, 0o600) }

func dupCloexec(fd int) (int, error) { return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0) }
