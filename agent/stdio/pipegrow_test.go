package stdio

import (
	"bytes"
	"io"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pipeSize is the capacity of st's pipe (F_GETPIPE_SZ).
func pipeSize(t *testing.T, st *outStream) int {
	t.Helper()
	rc, err := st.f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	n := -1
	rc.Control(func(fd uintptr) { n, err = unix.FcntlInt(fd, unix.F_GETPIPE_SZ, 0) })
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// attachAndStream attaches s's stdout to a fresh socket and checks that
// 3 MiB written by the process arrive whole.
func attachAndStream(t *testing.T, s *IO) {
	t.Helper()
	_, w, _ := s.ChildFiles()
	wdup, err := dupFile(w)
	if err != nil {
		t.Fatal(err)
	}
	s.CloseChildSide()
	agent, host := socketPair(t)
	defer host.Close()
	if err := s.AttachStdout(agent); err != nil {
		t.Fatal(err)
	}
	want, _ := payload(3 << 20)
	go func() {
		wdup.Write(want)
		wdup.Close()
	}()
	host.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(host)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes (%v), want the %d written", len(got), err, len(want))
	}
}

// An attached stream's pipe grows to AttachPipeSize while the budget lasts;
// past it the stream keeps its pipe and still moves every byte; Close gives
// the capacity back; a size the operator chose is left alone.
func TestAttachGrowsPipeWithinBudget(t *testing.T) {
	def := pipeSize(t, newIO(t, Options{}).stdout)
	if def >= AttachPipeSize {
		t.Fatalf("default pipe size %d is not below AttachPipeSize", def)
	}
	saved := pipeBudget
	b := &budget{limit: AttachPipeSize - def} // room for one grown pipe
	pipeBudget = b
	t.Cleanup(func() { pipeBudget = saved })

	first := newIO(t, Options{})
	attachAndStream(t, first)
	if n := pipeSize(t, first.stdout); n != AttachPipeSize {
		t.Errorf("attached pipe holds %d, want %d", n, AttachPipeSize)
	}
	if b.inUse() != AttachPipeSize-def {
		t.Errorf("budget in use %d, want %d", b.inUse(), AttachPipeSize-def)
	}

	second := newIO(t, Options{})
	attachAndStream(t, second)
	if n := pipeSize(t, second.stdout); n != def {
		t.Errorf("pipe attached past the budget holds %d, want %d as it was", n, def)
	}

	first.Close()
	if b.inUse() != 0 {
		t.Errorf("budget in use after Close: %d", b.inUse())
	}
	third := newIO(t, Options{})
	attachAndStream(t, third)
	if n := pipeSize(t, third.stdout); n != AttachPipeSize {
		t.Errorf("pipe attached after the budget came back holds %d, want %d", n, AttachPipeSize)
	}
	third.Close()

	chosen := newIO(t, Options{PipeSize: 128 << 10})
	attachAndStream(t, chosen)
	if n := pipeSize(t, chosen.stdout); n != 128<<10 {
		t.Errorf("agent.container_pipe_size pipe holds %d after attach, want %d", n, 128<<10)
	}
	if b.inUse() != 0 {
		t.Errorf("budget in use %d for a pipe the operator sized", b.inUse())
	}
}
