package containerbench

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/containers"
	"github.com/keelvm/keel/agent/server"
	"github.com/keelvm/keel/protocol/client"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/bench/bufcopy"
	"golang.org/x/sys/unix"
)

// Both stdout benchmarks move the output of the same busybox dd: 64 MiB of
// zeros in 256 KiB writes, into a pipe. Each runs with the kernel's default
// pipe capacity and with agent.container_pipe_size = 1 MiB, since a read of a
// pipe returns at most what the pipe holds.
const (
	stdoutBytes = 64 << 20
	chunk       = 1 << 20
)

var ddArgs = []string{"dd", "if=/dev/zero", "bs=262144", fmt.Sprintf("count=%d", stdoutBytes/262144)}

var pipeSizes = []struct {
	name string
	size int // 0 = the kernel's default (64 KiB)
}{{"pipe=64KiB", 0}, {"pipe=1MiB", 1 << 20}}

// serveTTRPC serves the handlers with agent/server, as keel-agent does, on
// a unix socket and returns a client connected to it.
func serveTTRPC(tb testing.TB, r *containers.RPC) *client.Client {
	tb.Helper()
	c, _ := serveTTRPCAt(tb, r)
	return c
}

// serveTTRPCAt is serveTTRPC that also returns the address served, for
// more connections (protocol/outputreader dials its own).
func serveTTRPCAt(tb testing.TB, r *containers.RPC) (*client.Client, string) {
	tb.Helper()
	srv, err := server.New(agentService{RPC: r}, nil, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	l, err := server.Listen("unix://" + filepath.Join(tb.TempDir(), "agent.sock"))
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(context.Background(), l)
	}()
	conn, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		srv.Close()
		tb.Fatal(err)
	}
	c := client.New(conn)
	tb.Cleanup(func() {
		c.Close()
		srv.Close()
		<-done
	})
	return c, "unix://" + l.Addr().String()
}

// BenchmarkStdoutRPCPath1MiB: a container process's stdout read with 1 MiB
// ReadStdout calls over a real ttrpc unix-socket connection.
func BenchmarkStdoutRPCPath1MiB(b *testing.B) {
	for _, ps := range pipeSizes {
		b.Run(ps.name, func(b *testing.B) { benchStdoutRPC(b, ps.size, chunk) })
	}
}

// BenchmarkStdoutRPCPath32KiB: the same with 32 KiB reads, the len Kata's
// runtime asks for (its shim copies stdout through a 32 KiB buffer), on
// the kernel's default pipe.
func BenchmarkStdoutRPCPath32KiB(b *testing.B) {
	b.Run(pipeSizes[0].name, func(b *testing.B) { benchStdoutRPC(b, pipeSizes[0].size, 32<<10) })
}

// benchStdoutRPC drains dd's output from an exec in a container with
// ReadStdout calls of readLen bytes.
func benchStdoutRPC(b *testing.B, pipeSize int, readLen uint32) {
	r, _ := newRPC(b, containers.Options{PipeSize: pipeSize, ExecIOLinger: time.Nanosecond})
	agent := serveTTRPC(b, r).Agent
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, err := agent.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "out", OCI: pbSpec("/bin/sleep", "1000")}); err != nil {
		b.Fatal(err)
	}
	if _, err := agent.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "out"}); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(stdoutBytes)
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		eid := fmt.Sprintf("dd%d", i)
		if _, err := agent.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: "out", ExecId: eid, Process: pbProcess(append([]string{"/bin/" + ddArgs[0]}, ddArgs[1:]...)...)}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		n, err := drainStdout(ctx, agent, "out", eid, readLen)
		b.StopTimer()
		if err != nil || n != stdoutBytes {
			b.Fatalf("ReadStdout: %d bytes, %v", n, err)
		}
		if w, err := agent.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: "out", ExecId: eid}); err != nil || w.Status != 0 {
			b.Fatalf("WaitProcess: %v %v", w, err)
		}
		b.StartTimer()
	}
}

// BenchmarkRawUnixCopy1MiB: the same dd output copied from a pipe to a unix
// socket pair with 1 MiB buffers and no agent code (the semantics of
// agent/stdio's BenchmarkRawUnixCopy).
func BenchmarkRawUnixCopy1MiB(b *testing.B) {
	for _, ps := range pipeSizes {
		b.Run(ps.name, func(b *testing.B) {
			// The reaper must own wait(2) as in the agent (dd is started
			// through it); container.New starts it.
			newRPC(b, containers.Options{})
			rbuf, wbuf := make([]byte, chunk), make([]byte, chunk)
			b.SetBytes(stdoutBytes)
			for b.Loop() {
				b.StopTimer()
				pr, pw, err := os.Pipe()
				if err != nil {
					b.Fatal(err)
				}
				if ps.size > 0 {
					if _, err := unix.FcntlInt(pw.Fd(), unix.F_SETPIPE_SZ, ps.size); err != nil {
						b.Fatal(err)
					}
				}
				agentSide, hostSide := socketPair(b)
				cmd := exec.Command("/bin/busybox", ddArgs...)
				cmd.Stdout = pw
				exited, err := startReaped(cmd)
				pw.Close()
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				go func() {
					bufcopy.Copy(agentSide, pr, wbuf)
					agentSide.CloseWrite()
					pr.Close()
				}()
				n, err := bufcopy.Discard(hostSide, rbuf)
				b.StopTimer()
				if err != nil || n != stdoutBytes {
					b.Fatalf("copied %d bytes, %v", n, err)
				}
				if st := <-exited; st.Code != 0 {
					b.Fatalf("dd: %v", st)
				}
				agentSide.Close()
				hostSide.Close()
				b.StartTimer()
			}
		})
	}
}

// socketPair is a connected pair of unix stream sockets.
func socketPair(tb testing.TB) (*net.UnixConn, *net.UnixConn) {
	tb.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	var conns [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			tb.Fatal(err)
		}
		conns[i] = c.(*net.UnixConn)
	}
	return conns[0], conns[1]
}
