package stdio

import (
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// socketPair returns both ends of a connected unix stream socket; the
// caller closes them.
func socketPair(t testing.TB) (agent, host *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]*net.UnixConn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c.(*net.UnixConn)
	}
	return conns[0], conns[1]
}

// Attached streams end without leaving a descriptor, a goroutine or pipe
// budget (AttachPipeBudget) behind,
// whichever way they end: EOF after every byte moved, or Close while the
// copier waits on a host that does not read (the process still running),
// through splice(2) and through the copy loop, stdin included.
func TestAttachLeavesNothing(t *testing.T) {
	runtime.GC()
	fds, goroutines, budget := fdCount(t), runtime.NumGoroutine(), pipeBudget.inUse()
	for i := 0; i < 20; i++ {
		for _, stalled := range []bool{false, true} {
			for _, wrap := range []bool{false, true} {
				attachCycle(t, stalled, wrap)
			}
		}
	}
	checkFds(t, fds)
	if n := pipeBudget.inUse(); n != budget {
		t.Errorf("pipe budget in use %d after the cycles, %d before", n, budget)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > goroutines {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutine leak: %d running, %d before\n%s", runtime.NumGoroutine(), goroutines, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// attachCycle attaches stdout (splice, or the copy loop when wrap) and stdin
// to fresh sockets and ends them: stalled leaves 4 MiB unwritten behind a
// host that never reads and a writer that never closes, then Closes.
func attachCycle(t *testing.T, stalled, wrap bool) {
	s, err := New(Options{Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	_, w, _ := s.ChildFiles()
	wdup, err := dupFile(w)
	if err != nil {
		t.Fatal(err)
	}
	s.CloseChildSide()
	outA, outH := socketPair(t)
	inA, inH := socketPair(t)
	defer outH.Close()
	defer inH.Close()
	var out net.Conn = outA
	if wrap {
		out = plainConn{outA}
	}
	if err := s.AttachStdout(out); err != nil {
		t.Fatal(err)
	}
	if err := s.AttachStdin(inA); err != nil {
		t.Fatal(err)
	}
	// More than the pipe (at most AttachPipeSize) and the socket hold.
	const n = 4 << 20
	written := make(chan error, 1)
	go func() {
		_, err := wdup.Write(make([]byte, n))
		written <- err
	}()
	if stalled {
		// The host reads nothing: the copier waits on a full socket, the
		// writer on a full pipe. Close must end both.
		time.Sleep(20 * time.Millisecond)
		s.Close()
		if err := <-written; err == nil {
			t.Error("the writer finished 4 MiB into a stalled stream")
		}
		wdup.Close()
		return
	}
	go func() { <-written; wdup.Close() }()
	outH.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.Copy(io.Discard, outH)
	if err != nil || got != n {
		t.Fatalf("wrap=%v: got %d bytes, %v; want %d", wrap, got, err, n)
	}
	inH.Close() // EOF on stdin: the stdin copier closes the pipe and ends
	s.Close()
}
