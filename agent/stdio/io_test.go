package stdio

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestStdoutLosslessSlowReader(t *testing.T) {
	n := lossless()
	path, want := payloadFile(t, n)
	s := newIO(t, Options{})
	start(t, s, "cat", path)
	got, err := readAll(ctxT(t, 5*time.Minute), s.ReadStdout, 32<<10, 2*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n || sha256.Sum256(got) != want {
		t.Fatalf("got %d bytes sha %x, want %d bytes sha %x", len(got), sha256.Sum256(got), n, want)
	}
}

func TestStdinLossless(t *testing.T) {
	n := lossless()
	data, want := payload(n)
	s := newIO(t, Options{Stdin: true})
	start(t, s, "sha256sum")
	ctx := ctxT(t, 5*time.Minute)
	for off := 0; off < n; {
		end := min(off+1<<20, n) // Kata's shim sends chunks of at most 1 MiB
		w, err := s.Write(ctx, data[off:end])
		if err != nil {
			t.Fatalf("write at %d: %v", off, err)
		}
		off += w
	}
	if err := s.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	out, err := readAll(ctx, s.ReadStdout, 4096, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(out)); len(got) == 0 || got[0] != hex.EncodeToString(want[:]) {
		t.Fatalf("sha256sum printed %q, want %x", out, want)
	}
}

// Everything an exited process wrote is delivered, even when the host only
// starts reading well after ExitGrace.
func TestExitedProcessOutputKeptPastGrace(t *testing.T) {
	data, want := payload(60 << 10) // fits the default 64 KiB pipe
	path := t.TempDir() + "/p"
	writeFile(t, path, data)
	s := newIO(t, Options{})
	p := start(t, s, "cat", path)
	<-p.exited
	time.Sleep(2 * ExitGrace)
	got, err := readAll(ctxT(t, 10*time.Second), s.ReadStdout, 1000, 0)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != want {
		t.Fatalf("got %d bytes, want %d identical", len(got), len(data))
	}
}

func TestEOF(t *testing.T) {
	s := newIO(t, Options{})
	start(t, s, "true")
	ctx := ctxT(t, 10*time.Second)
	for i := 0; i < 2; i++ { // EOF is sticky
		if b, err := s.ReadStdout(ctx, 100); !errors.Is(err, io.EOF) || len(b) != 0 {
			t.Fatalf("stdout read %d: %q, %v; want EOF", i, b, err)
		}
		if b, err := s.ReadStderr(ctx, 100); !errors.Is(err, io.EOF) || len(b) != 0 {
			t.Fatalf("stderr read %d: %q, %v; want EOF", i, b, err)
		}
	}
}

func TestStderrSeparate(t *testing.T) {
	s := newIO(t, Options{})
	start(t, s, "sh", "-c", "echo out; echo err >&2")
	ctx := ctxT(t, 10*time.Second)
	out, _ := readAll(ctx, s.ReadStdout, 100, 0)
	errb, _ := readAll(ctx, s.ReadStderr, 100, 0)
	if string(out) != "out\n" || string(errb) != "err\n" {
		t.Fatalf("stdout %q stderr %q", out, errb)
	}
}

// Kata agent#370 / kata-containers#4747: a background child holding stdout
// must not delay EOF beyond ExitGrace.
func TestBackgroundGrandchildDoesNotHoldEOF(t *testing.T) {
	s := newIO(t, Options{})
	p := start(t, s, "sh", "-c", "sleep 30 & echo hi")
	ctx := ctxT(t, 20*time.Second)
	b, err := s.ReadStdout(ctx, 100)
	if err != nil || string(b) != "hi\n" {
		t.Fatalf("first read %q, %v", b, err)
	}
	<-p.exited
	t0 := time.Now()
	if b, err := s.ReadStdout(ctx, 100); !errors.Is(err, io.EOF) {
		t.Fatalf("second read %q, %v; want EOF", b, err)
	}
	if d := time.Since(t0); d > ExitGrace+time.Second {
		t.Fatalf("EOF after %v, want within ExitGrace (%v)", d, ExitGrace)
	}
}

// What a grandchild wrote before the host got round to reading is still
// delivered after the grace; EOF comes at the first empty moment after it.
func TestDataAfterGraceStillDelivered(t *testing.T) {
	s := newIO(t, Options{})
	done := filepath.Join(t.TempDir(), "done")
	p := start(t, s, "sh", "-c", "(i=0; while [ $i -lt 5 ]; do echo tick; i=$((i+1)); sleep 0.1; done; touch "+done+") & echo hi")
	<-p.exited
	time.Sleep(ExitGrace + 100*time.Millisecond)
	// On a busy machine the ticks may take longer than the grace: wait
	// until all were written, which is what the test is about.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(done); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatal("the grandchild did not finish its ticks in 10 s")
		}
	}
	ctx := ctxT(t, 10*time.Second)
	got, err := readAll(ctx, s.ReadStdout, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The subshell's ticks and "hi" may interleave in any order.
	if !strings.Contains(string(got), "hi\n") || strings.Count(string(got), "tick\n") != 5 {
		t.Fatalf("got %q, want hi and 5 ticks", got)
	}
}

func TestReadHonoursContext(t *testing.T) {
	s := newIO(t, Options{})
	start(t, s, "sh", "-c", "sleep 3; echo late")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if _, err := s.ReadStdout(ctx, 10); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want deadline", err)
	}
	// A read that noticed its context only when output came would return
	// after the 3 s sleep; 2 s tells the two apart with room for a loaded
	// CI machine (500 ms was a flake risk).
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("cancel was slow: %v", d)
	}
	// The stream is still usable with a fresh context.
	b, err := s.ReadStdout(ctxT(t, 10*time.Second), 10)
	if err != nil || string(b) != "late\n" {
		t.Fatalf("after cancel: %q, %v", b, err)
	}
}

func TestWriteAfterExitFails(t *testing.T) {
	t.Run("no reader", func(t *testing.T) {
		s := newIO(t, Options{Stdin: true})
		p := start(t, s, "true")
		<-p.exited
		if _, err := s.Write(ctxT(t, 10*time.Second), []byte("x")); !errors.Is(err, ErrProcessExited) {
			t.Fatalf("err %v, want ErrProcessExited", err)
		}
	})
	t.Run("grandchild holds stdin", func(t *testing.T) {
		s := newIO(t, Options{Stdin: true})
		// dash points a background job's stdin at /dev/null before its own
		// redirections, so hand the pipe over through fd 3.
		p := start(t, s, "sh", "-c", "exec 3<&0; sleep 30 0<&3 &")
		<-p.exited
		t0 := time.Now()
		big := make([]byte, 4<<20) // more than the pipe holds
		n, err := s.Write(ctxT(t, 20*time.Second), big)
		if err != nil || n >= len(big) {
			t.Fatalf("wrote %d, err %v; want a short write", n, err)
		}
		if n, err := s.Write(ctxT(t, 20*time.Second), big); n != 0 || !errors.Is(err, ErrProcessExited) {
			t.Fatalf("next write: %d, %v; want ErrProcessExited", n, err)
		}
		if d := time.Since(t0); d > ExitGrace+time.Second || d < ExitGrace/2 {
			t.Fatalf("write failed after %v, want about ExitGrace (%v)", d, ExitGrace)
		}
	})
}

func TestStdinClosedAndDevNull(t *testing.T) {
	s := newIO(t, Options{}) // no stdin: /dev/null
	start(t, s, "cat")
	ctx := ctxT(t, 10*time.Second)
	if _, err := s.Write(ctx, []byte("x")); !errors.Is(err, ErrStdinClosed) {
		t.Fatalf("write without stdin: %v", err)
	}
	if b, err := s.ReadStdout(ctx, 10); !errors.Is(err, io.EOF) {
		t.Fatalf("cat </dev/null: %q, %v", b, err)
	}

	s2 := newIO(t, Options{Stdin: true})
	start(t, s2, "cat")
	if _, err := s2.Write(ctx, nil); err != nil { // empty write closes stdin
		t.Fatal(err)
	}
	if err := s2.CloseStdin(); err != nil { // twice is fine
		t.Fatal(err)
	}
	if _, err := s2.Write(ctx, []byte("x")); !errors.Is(err, ErrStdinClosed) {
		t.Fatalf("write after close: %v", err)
	}
	if b, err := s2.ReadStdout(ctx, 10); !errors.Is(err, io.EOF) {
		t.Fatalf("cat after close: %q, %v", b, err)
	}
}

// The clamp is checked on a stream over a regular file: a pipe above
// /proc/sys/fs/pipe-max-size (1 MiB) needs CAP_SYS_RESOURCE, so a pipe
// cannot portably hold more than MaxReadLen.
func TestReadLenLimits(t *testing.T) {
	data, _ := payload(2*MaxReadLen + 10)
	path := t.TempDir() + "/p"
	writeFile(t, path, data)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st := &outStream{name: "stdout", f: f, exit: &exitState{}}
	ctx := ctxT(t, 10*time.Second)
	if _, err := st.readRPC(ctx, 0, 0, nil); err == nil {
		t.Fatal("len 0 accepted")
	}
	var got []byte
	for _, ask := range []int{4 * MaxReadLen, MaxReadLen + 1, MaxReadLen} {
		b, err := st.readRPC(ctx, ask, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		want := min(ask, MaxReadLen, len(data)-len(got))
		if len(b) != want {
			t.Fatalf("read of %d gave %d bytes, want %d", ask, len(b), want)
		}
		got = append(got, b...)
	}
	if _, err := st.readRPC(ctx, 10, 0, nil); !errors.Is(err, io.EOF) || !bytes.Equal(got, data) {
		t.Fatalf("end: %v, equal=%v", err, bytes.Equal(got, data))
	}
}

func TestPipeSize(t *testing.T) {
	if _, err := New(Options{PipeSize: MaxPipeSize + 1}); err == nil {
		t.Fatal("PipeSize above MaxPipeSize accepted")
	}
	if _, err := New(Options{PipeSize: -1}); err == nil {
		t.Fatal("negative PipeSize accepted")
	}
	s := newIO(t, Options{PipeSize: 1 << 20, Stdin: true})
	in, out, _ := s.ChildFiles()
	for name, f := range map[string]int{"stdin": int(in.Fd()), "stdout": int(out.Fd())} {
		sz, err := unix.FcntlInt(uintptr(f), unix.F_GETPIPE_SZ, 0)
		if err != nil || sz != 1<<20 {
			t.Errorf("%s pipe size %d, %v; want 1 MiB", name, sz, err)
		}
	}
}

func TestCloseReleasesEverything(t *testing.T) {
	base := fdCount(t)
	s, err := New(Options{Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	p := start(t, s, "sleep", "30")
	done := make(chan error, 1)
	go func() {
		_, err := s.ReadStdout(context.Background(), 10)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	s.Close()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("blocked read returned %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock the reader")
	}
	p.cmd.Process.Kill()
	<-p.exited
	checkFds(t, base)
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := writeFileErr(path, b); err != nil {
		t.Fatal(err)
	}
}

// A second reader queued behind a blocked one still honours its context.
func TestQueuedReaderHonoursContext(t *testing.T) {
	s := newIO(t, Options{})
	start(t, s, "sleep", "30")
	go s.ReadStdout(context.Background(), 10) // blocks until Close
	time.Sleep(50 * time.Millisecond)
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := s.ReadStdout(ctx, 10); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued reader: %v", err)
	}
	if time.Since(t0) > time.Second {
		t.Fatal("queued reader ignored its deadline")
	}
}

// A write cut short by its context reports what the process received, so
// the host never resends it; the next write reports the error.
func TestShortWriteOnContext(t *testing.T) {
	s := newIO(t, Options{Stdin: true})
	start(t, s, "sleep", "30") // never reads: the pipe fills
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	n, err := s.Write(ctx, make([]byte, 1<<20))
	if err != nil || n <= 0 || n >= 1<<20 {
		t.Fatalf("first write: %d, %v; want a short write", n, err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if n, err := s.Write(ctx2, []byte("x")); n != 0 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second write: %d, %v", n, err)
	}
}

// The process gets blocking stdio (runtime#2467: a non-blocking stdout
// made writers fail with EAGAIN); only the agent's ends are non-blocking.
func TestChildSideIsBlocking(t *testing.T) {
	s := newIO(t, Options{Stdin: true})
	in, out, errf := s.ChildFiles()
	flags := func(f *os.File) int {
		rc, err := f.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var fl int
		rc.Control(func(fd uintptr) { fl, _ = unix.FcntlInt(fd, unix.F_GETFL, 0) })
		return fl
	}
	for name, f := range map[string]*os.File{"stdin": in, "stdout": out, "stderr": errf} {
		if flags(f)&unix.O_NONBLOCK != 0 {
			t.Errorf("child %s is non-blocking", name)
		}
	}
	if flags(s.stdout.f)&unix.O_NONBLOCK == 0 || flags(s.stdin.f)&unix.O_NONBLOCK == 0 {
		t.Error("agent ends must be non-blocking (poller, deadlines)")
	}
}

// ReadStdoutWithHeadroom (the in-place encoding path behind the ReadStdout
// RPC) is lossless for every read size: len 1 (the one-byte probe of an
// empty-looking pipe, then a one-byte answer), Kata's 32 KiB, and 1 MiB
// on a 1 MiB pipe (answers gathered across several pipe reads, growing the
// buffer). Every answer keeps the headroom free and holds at most len bytes.
func TestReadWithHeadroomLossless(t *testing.T) {
	const headroom = 6
	n := lossless()
	path, want := payloadFile(t, n)
	for _, tc := range []struct {
		name string
		pipe int
		lens []int
	}{
		{"pipe=64KiB", 0, []int{32 << 10, 1, 1 << 20, 7}},
		{"pipe=1MiB", 1 << 20, []int{1 << 20, 32 << 10, 1, 300 << 10}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newIO(t, Options{PipeSize: tc.pipe})
			start(t, s, "cat", path)
			ctx := ctxT(t, 5*time.Minute)
			var got bytes.Buffer
			var reads, multi int
			for i := 0; ; i++ {
				ask := tc.lens[i%len(tc.lens)]
				b, err := s.ReadStdoutWithHeadroom(ctx, ask, headroom)
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if len(b) <= headroom || len(b)-headroom > ask {
					t.Fatalf("read %d: asked %d, got %d bytes after %d of headroom", i, ask, len(b)-headroom, headroom)
				}
				if !bytes.Equal(b[:headroom], make([]byte, headroom)) {
					t.Fatalf("read %d: data written into the headroom: %x", i, b[:headroom])
				}
				if len(b)-headroom > 64<<10 {
					multi++ // more than a default pipe holds: gathered or a big pipe
				}
				reads++
				got.Write(b[headroom:])
			}
			if got.Len() != n || sha256.Sum256(got.Bytes()) != want {
				t.Fatalf("got %d bytes sha %x, want %d bytes sha %x", got.Len(), sha256.Sum256(got.Bytes()), n, want)
			}
			t.Logf("%d reads, %d of more than 64 KiB", reads, multi)
		})
	}
}
