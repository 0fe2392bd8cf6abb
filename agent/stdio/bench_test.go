package stdio

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/ttrpc"

	pb "github.com/keelvm/keel/protocol/grpc"
)

// The three benchmarks move the same bytes from a process-side pipe to a
// host-side reader, so their MB/s compare the paths:
//
//   - BenchmarkStdoutRPCPath: Kata's ReadStdout over ttrpc on a Unix socket,
//     32 KiB per call (the buffer size of the shims' io.Copy).
//   - BenchmarkStdoutFastPath: the passfd path, AttachStdout to a socket.
//   - BenchmarkRawUnixCopy: io.Copy from the pipe to the socket, no agent
//     code: the ceiling.
//
// `make bench` reports their ratios.
const benchBytes = 64 << 20

// benchWriter plays the process: it writes benchBytes into the child end of
// stdout, then closes it (EOF).
func benchWriter(b *testing.B, w *os.File) {
	buf := make([]byte, 256<<10)
	go func() {
		defer w.Close()
		for left := benchBytes; left > 0; left -= len(buf) {
			if _, err := w.Write(buf[:min(len(buf), left)]); err != nil {
				return
			}
		}
	}()
}

type readStdoutService struct {
	pb.AgentServiceService // only ReadStdout is served
	io                     *IO
}

func (s *readStdoutService) ReadStdout(ctx context.Context, r *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error) {
	b, err := s.io.ReadStdout(ctx, int(r.Len))
	if err == io.EOF {
		return &pb.ReadStreamResponse{}, nil
	}
	return &pb.ReadStreamResponse{Data: b}, err
}

func BenchmarkStdoutRPCPath(b *testing.B) {
	sock := filepath.Join(b.TempDir(), "ttrpc")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		b.Fatal(err)
	}
	svc := &readStdoutService{}
	pb.RegisterAgentServiceService(srv, svc)
	go srv.Serve(context.Background(), l)
	defer srv.Close()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	agent := pb.NewAgentServiceClient(client)
	ctx := context.Background()

	b.SetBytes(benchBytes)
	for b.Loop() {
		b.StopTimer()
		s, err := New(Options{})
		if err != nil {
			b.Fatal(err)
		}
		_, w, _ := s.ChildFiles()
		wdup, _ := dupFile(w)
		s.CloseChildSide()
		svc.io = s
		b.StartTimer()
		benchWriter(b, wdup)
		n := 0
		for {
			r, err := agent.ReadStdout(ctx, &pb.ReadStreamRequest{Len: 32 << 10})
			if err != nil {
				b.Fatal(err)
			}
			if len(r.Data) == 0 {
				break
			}
			n += len(r.Data)
		}
		if n != benchBytes {
			b.Fatalf("got %d bytes", n)
		}
		s.Close()
	}
}

func BenchmarkStdoutFastPath(b *testing.B) {
	b.SetBytes(benchBytes)
	buf := make([]byte, 256<<10)
	for b.Loop() {
		b.StopTimer()
		s, err := New(Options{})
		if err != nil {
			b.Fatal(err)
		}
		agent, host := unixPair(b)
		_, w, _ := s.ChildFiles()
		wdup, _ := dupFile(w)
		s.CloseChildSide()
		b.StartTimer()
		benchWriter(b, wdup)
		if err := s.AttachStdout(agent); err != nil {
			b.Fatal(err)
		}
		n, err := io.CopyBuffer(io.Discard, host, buf)
		if err != nil || n != benchBytes {
			b.Fatalf("got %d bytes, %v", n, err)
		}
		s.Close()
	}
}

func BenchmarkRawUnixCopy(b *testing.B) {
	b.SetBytes(benchBytes)
	buf := make([]byte, 256<<10)
	for b.Loop() {
		b.StopTimer()
		r, w, err := os.Pipe()
		if err != nil {
			b.Fatal(err)
		}
		agent, host := unixPair(b)
		b.StartTimer()
		benchWriter(b, w)
		go func() {
			io.CopyBuffer(agent, r, make([]byte, 256<<10))
			agent.CloseWrite()
			r.Close()
		}()
		n, err := io.CopyBuffer(io.Discard, host, buf)
		if err != nil || n != benchBytes {
			b.Fatalf("got %d bytes, %v", n, err)
		}
	}
}

// dupFile duplicates f so the benchmark writer owns a copy that
// CloseChildSide does not close.
func dupFile(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var nf *os.File
	var derr error
	rc.Control(func(fd uintptr) {
		var n int
		n, derr = dupCloexec(int(fd))
		if derr == nil {
			nf = os.NewFile(uintptr(n), f.Name())
		}
	})
	return nf, derr
}

// BenchmarkReadStdout calls IO.ReadStdout directly (no ttrpc) with small
// and large len, so a change to how readRPC takes its buffer shows on both.
func BenchmarkReadStdout(b *testing.B) {
	for _, ln := range []int{32 << 10, MaxReadLen} {
		b.Run(fmt.Sprintf("len=%d", ln), func(b *testing.B) {
			b.SetBytes(benchBytes)
			ctx := context.Background()
			for b.Loop() {
				b.StopTimer()
				s, err := New(Options{PipeSize: 1 << 20})
				if err != nil {
					b.Fatal(err)
				}
				_, w, _ := s.ChildFiles()
				wdup, _ := dupFile(w)
				s.CloseChildSide()
				b.StartTimer()
				benchWriter(b, wdup)
				n := 0
				for {
					d, err := s.ReadStdout(ctx, ln)
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					n += len(d)
				}
				if n != benchBytes {
					b.Fatalf("got %d bytes", n)
				}
				s.Close()
			}
		})
	}
}
