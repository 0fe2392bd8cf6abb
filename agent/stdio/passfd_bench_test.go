package stdio

import (
	"net"
	"testing"
	"time"

	"github.com/keelvm/keel/tests/bench/bufcopy"
)

// BenchmarkStdoutFastPathPaired times the passfd path and its raw baseline
// alternately in the same loop, so all arms see the same machine load (on
// a shared machine, BenchmarkStdoutFastPath and BenchmarkRawUnixCopy run
// seconds apart and their ratio swings with the load in between). Each op
// moves benchBytes through each arm, in turn:
//
//   - fast: AttachStdout from a stdio pipe to a unix socket, as
//     BenchmarkStdoutFastPath (splice(2): the bytes stay in the kernel);
//   - copy: the same with the socket's descriptor hidden, so AttachStdout
//     copies through user space as it does for AF_VSOCK;
//   - raw: a plain read(2)/write(2) loop with 256 KiB buffers from a pipe of
//     the same size (AttachPipeSize, which the fast path grows its pipe
//     to) to the same kind of socket, no agent code.
//
// All arms have the same writer (256 KiB writes), the same pipe size and
// the same host reader (256 KiB reads). It reports each arm's MB/s over the
// raw arm's (fast/raw is P3's fast path figure, target >= 0.95) and the
// CPU the whole process (writer, copier, reader) spent per MB in each arm,
// which the load moves less than wall time.
func BenchmarkStdoutFastPathPaired(b *testing.B) {
	b.SetBytes(3 * benchBytes)
	buf := make([]byte, 256<<10)
	arms := []struct {
		name      string
		run       func() time.Duration
		wall, cpu time.Duration
	}{
		{name: "fast", run: func() time.Duration { return fastPathOnce(b, buf, false) }},
		{name: "copy", run: func() time.Duration { return fastPathOnce(b, buf, true) }},
		{name: "raw", run: func() time.Duration { return rawCopyOnce(b, buf) }},
	}
	round := 0
	for b.Loop() {
		for k := range arms {
			a := &arms[(k+round)%len(arms)] // rotate which arm goes first
			c0, _ := usage()
			a.wall += a.run()
			c1, _ := usage()
			a.cpu += c1 - c0
		}
		round++
	}
	mb := float64(b.N) * benchBytes / 1e6
	raw := arms[2]
	for _, a := range arms {
		if a.name != "raw" {
			b.ReportMetric(float64(raw.wall)/float64(a.wall), a.name+"/raw")
		}
		b.ReportMetric(float64(a.cpu)/1e6/mb, a.name+"-cpu-ms/MB")
	}
}

// fastPathOnce moves benchBytes through AttachStdout and returns the time
// from the first write to the reader's EOF.
func fastPathOnce(b *testing.B, buf []byte, copyLoop bool) time.Duration {
	s, err := New(Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	agent, host := unixPair(b)
	_, w, _ := s.ChildFiles()
	wdup, err := dupFile(w)
	if err != nil {
		b.Fatal(err)
	}
	s.CloseChildSide()
	start := time.Now()
	benchWriter(b, wdup)
	var conn net.Conn = agent
	if copyLoop {
		conn = noSyscallConn{agent}
	}
	if err := s.AttachStdout(conn); err != nil {
		b.Fatal(err)
	}
	n, err := bufcopy.Discard(host, buf)
	if err != nil || n != benchBytes {
		b.Fatalf("fast path: got %d bytes, %v", n, err)
	}
	return time.Since(start)
}

// rawCopyOnce is fastPathOnce with a read/write loop in place of the agent.
func rawCopyOnce(b *testing.B, buf []byte) time.Duration {
	// stdio's own pipe: the capacity the fast path's attached pipe gets
	// (see AttachPipeSize), the copier's read end in Go's poller and the
	// writer's end blocking, as a container's stdout is in the other arms.
	r, w, err := pipe(AttachPipeSize, true)
	if err != nil {
		b.Fatal(err)
	}
	agent, host := unixPair(b)
	start := time.Now()
	benchWriter(b, w)
	go func() {
		defer r.Close()
		bufcopy.Copy(agent, r, make([]byte, 256<<10))
		agent.CloseWrite()
	}()
	n, err := bufcopy.Discard(host, buf)
	if err != nil || n != benchBytes {
		b.Fatalf("raw: got %d bytes, %v", n, err)
	}
	return time.Since(start)
}

// noSyscallConn hides the socket's descriptor, so AttachStdout copies
// through user space as it does for AF_VSOCK.
type noSyscallConn struct{ *net.UnixConn }

func (c noSyscallConn) SyscallConn() {}
