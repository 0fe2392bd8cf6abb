package stdio

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/keelvm/keel/agent/server"
	"github.com/keelvm/keel/agent/streamread"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/protocol/readstream"
	"github.com/keelvm/keel/tests/bench/bufcopy"
)

// The benchmarks move the same bytes from a process-side pipe to a
// host-side reader, so their MB/s compare the paths:
//
//   - BenchmarkStdoutRPCPath: Kata's ReadStdout over ttrpc on a Unix socket,
//     32 KiB per call (the buffer size of the Kata shim's io.CopyBuffer,
//     src/runtime/pkg/containerd-shim-v2/stream.go bufSize, which
//     virtcontainers passes on as ReadStreamRequest.len), served by
//     agent/server as the agent serves it (agent/streamread answers in
//     front of ttrpc, the frame written from a pooled read buffer), read
//     by the generated ttrpc client as Kata's runtime reads it: the whole
//     path, client included.
//   - BenchmarkStdoutRPCPathTTRPC: the same through ttrpc's handler path,
//     the response encoded in place around the data (protocol/readstream),
//     as before agent/streamread, for comparison in the same run.
//   - BenchmarkStdoutRPCPathAgentSide (and ...AgentSideTTRPC): the same
//     servers, read by a client that reads the answers as raw ttrpc frames
//     and does not decode or copy the data: what is left is the agent's
//     cost.
//   - BenchmarkStdoutRPCPathGenerated: the whole path with the generated
//     handler (proto.Marshal of a *grpc.ReadStreamResponse), as it was
//     before the in-place encoding, for comparison in the same run.
//   - BenchmarkStdoutFastPath: the passfd path, AttachStdout to a socket.
//   - BenchmarkRawUnixCopy: io.CopyBuffer from the pipe to the socket with
//     256 KiB buffers, no agent code: the ceiling.
//
// `make bench` reports their ratios.
const benchBytes = 64 << 20

// kataReadLen is the len Kata's runtime asks for in every ReadStdout.
const kataReadLen = 32 << 10

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

// generatedService serves ReadStdout through the generated handler only.
type generatedService struct {
	pb.AgentServiceService // only ReadStdout is served
	io                     *IO
}

func (s *generatedService) ReadStdout(ctx context.Context, r *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error) {
	b, err := s.io.ReadStdout(ctx, int(r.Len))
	if err == io.EOF {
		return &pb.ReadStreamResponse{}, nil
	}
	return &pb.ReadStreamResponse{Data: b}, err
}

// encodedService also answers with the in-place encoding, as
// agent/containers does; agent/server calls ReadStdoutEncoded.
type encodedService struct{ generatedService }

func (s *encodedService) ReadStdoutEncoded(ctx context.Context, r *pb.ReadStreamRequest) (proto.Message, error) {
	b, err := s.io.ReadStdoutWithHeadroom(ctx, readstream.DataLen(int(r.Len)), readstream.Headroom)
	if err == io.EOF {
		return &pb.ReadStreamResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	return readstream.Encode(b)
}

func (s *encodedService) ReadStderrEncoded(context.Context, *pb.ReadStreamRequest) (proto.Message, error) {
	return nil, ErrNoStream
}

// framedService also answers as agent/containers does since
// agent/streamread: agent/server serves ReadStdout in front of ttrpc and
// writes the reply frame from a pooled read buffer.
type framedService struct{ encodedService }

func (s *framedService) ReadStream(ctx context.Context, r *pb.ReadStreamRequest, stderr bool, headroom int, bufs streamread.Buffers) ([]byte, error) {
	if stderr {
		return nil, ErrNoStream
	}
	b, err := s.io.ReadStdoutInto(ctx, readstream.DataLen(int(r.Len)), headroom, bufs)
	if err == io.EOF {
		return nil, nil
	}
	return b, err
}

func (s *framedService) ReadStreamNow(r *pb.ReadStreamRequest, stderr bool, headroom int, bufs streamread.Buffers) ([]byte, bool) {
	if stderr {
		return nil, false
	}
	b, err := s.io.ReadStdoutNow(readstream.DataLen(int(r.Len)), headroom, bufs)
	return b, err == nil
}

// serveBench serves svc with agent/server on a unix socket and returns a
// connection to it.
func serveBench(b *testing.B, svc pb.AgentServiceService) net.Conn {
	srv, err := server.New(svc, nil, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	l, err := server.Listen("unix://" + filepath.Join(b.TempDir(), "ttrpc"))
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	b.Cleanup(func() { srv.Close() })
	conn, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return conn
}

// benchStdoutRPC drains benchBytes written into a fresh IO with read (one
// ReadStdout of kataReadLen; 0 bytes is the end of stream) per iteration.
func benchStdoutRPC(b *testing.B, setIO func(*IO), read func() (int, error)) {
	b.SetBytes(benchBytes)
	defer reportCPU(b)()
	for b.Loop() {
		b.StopTimer()
		s, err := New(Options{})
		if err != nil {
			b.Fatal(err)
		}
		_, w, _ := s.ChildFiles()
		wdup, _ := dupFile(w)
		s.CloseChildSide()
		setIO(s)
		b.StartTimer()
		benchWriter(b, wdup)
		n := 0
		for {
			m, err := read()
			if err != nil {
				b.Fatal(err)
			}
			if m == 0 {
				break
			}
			n += m
		}
		if n != benchBytes {
			b.Fatalf("got %d bytes", n)
		}
		s.Close()
	}
}

// generatedClientRead reads as Kata's runtime does: the generated client,
// then a copy into the caller's buffer (virtcontainers readProcessStream).
func generatedClientRead(b *testing.B, conn net.Conn) func() (int, error) {
	client := ttrpc.NewClient(conn)
	b.Cleanup(func() { client.Close() })
	agent := pb.NewAgentServiceClient(client)
	data := make([]byte, kataReadLen)
	return func() (int, error) {
		r, err := agent.ReadStdout(context.Background(), &pb.ReadStreamRequest{Len: kataReadLen})
		if err != nil {
			return 0, err
		}
		return copy(data, r.Data), nil
	}
}

func BenchmarkStdoutRPCPath(b *testing.B) {
	svc := &framedService{}
	benchStdoutRPC(b, func(s *IO) { svc.io = s }, generatedClientRead(b, serveBench(b, svc)))
}

func BenchmarkStdoutRPCPathTTRPC(b *testing.B) {
	svc := &encodedService{}
	benchStdoutRPC(b, func(s *IO) { svc.io = s }, generatedClientRead(b, serveBench(b, svc)))
}

func BenchmarkStdoutRPCPathGenerated(b *testing.B) {
	svc := &generatedService{}
	benchStdoutRPC(b, func(s *IO) { svc.io = s }, generatedClientRead(b, serveBench(b, svc)))
}

func BenchmarkStdoutRPCPathAgentSide(b *testing.B) {
	svc := &framedService{}
	rr, err := newRawReader(serveBench(b, svc), kataReadLen)
	if err != nil {
		b.Fatal(err)
	}
	benchStdoutRPC(b, func(s *IO) { svc.io = s }, rr.read)
}

func BenchmarkStdoutRPCPathAgentSideTTRPC(b *testing.B) {
	svc := &encodedService{}
	rr, err := newRawReader(serveBench(b, svc), kataReadLen)
	if err != nil {
		b.Fatal(err)
	}
	benchStdoutRPC(b, func(s *IO) { svc.io = s }, rr.read)
}

// rawReader is a ttrpc client for ReadStdout only that writes a prebuilt
// request frame and reads each answer into one reused buffer, finding the
// data with protowire instead of unmarshalling it.
type rawReader struct {
	conn net.Conn
	req  []byte // the request's payload (a ttrpc.Request)
	buf  []byte
	id   uint32
}

func newRawReader(conn net.Conn, ln uint32) (*rawReader, error) {
	rs, err := proto.Marshal(&pb.ReadStreamRequest{Len: ln})
	if err != nil {
		return nil, err
	}
	req, err := proto.Marshal(&ttrpc.Request{Service: "grpc.AgentService", Method: "ReadStdout", Payload: rs})
	if err != nil {
		return nil, err
	}
	return &rawReader{conn: conn, req: req, buf: make([]byte, 10+len(req)+int(ln)+64), id: 1}, nil
}

// read sends one request and returns how many bytes of data its answer
// carried.
func (r *rawReader) read() (int, error) {
	// Frame header: length, stream id (odd: client-initiated), type 1
	// (request), flags 0.
	h := r.buf[:10]
	binary.BigEndian.PutUint32(h[0:4], uint32(len(r.req)))
	binary.BigEndian.PutUint32(h[4:8], r.id)
	h[8], h[9] = 1, 0
	r.id += 2
	if _, err := r.conn.Write(append(h, r.req...)); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(r.conn, r.buf[:10]); err != nil {
		return 0, err
	}
	n := int(binary.BigEndian.Uint32(r.buf[0:4]))
	if r.buf[8] != 2 || n > len(r.buf) {
		return 0, fmt.Errorf("answer of type %d and %d bytes", r.buf[8], n)
	}
	msg := r.buf[:n]
	if _, err := io.ReadFull(r.conn, msg); err != nil {
		return 0, err
	}
	// ttrpc.Response: 1 status (message), 2 payload (the ReadStreamResponse).
	payload, err := field(msg, 2)
	if err != nil {
		return 0, err
	}
	if st, _ := field(msg, 1); len(st) > 0 {
		return 0, fmt.Errorf("answer with status %x", st)
	}
	data, err := field(payload, 1)
	return len(data), err
}

// field returns the last length-delimited field num of an encoded message
// (nil when absent), without copying it.
func field(msg []byte, num protowire.Number) ([]byte, error) {
	var out []byte
	for len(msg) > 0 {
		n, typ, l := protowire.ConsumeTag(msg)
		if l < 0 {
			return nil, protowire.ParseError(l)
		}
		msg = msg[l:]
		if typ == protowire.BytesType && n == num {
			v, l := protowire.ConsumeBytes(msg)
			if l < 0 {
				return nil, protowire.ParseError(l)
			}
			out, msg = v, msg[l:]
			continue
		}
		l = protowire.ConsumeFieldValue(n, typ, msg)
		if l < 0 {
			return nil, protowire.ParseError(l)
		}
		msg = msg[l:]
	}
	return out, nil
}

func BenchmarkStdoutFastPath(b *testing.B) {
	b.SetBytes(benchBytes)
	defer reportCPU(b)()
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
		n, err := bufcopy.Discard(host, buf)
		if err != nil || n != benchBytes {
			b.Fatalf("got %d bytes, %v", n, err)
		}
		s.Close()
	}
}

func BenchmarkRawUnixCopy(b *testing.B) {
	b.SetBytes(benchBytes)
	defer reportCPU(b)()
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
			// bufcopy: 256 KiB copies, as documented.
			bufcopy.Copy(agent, r, make([]byte, 256<<10))
			agent.CloseWrite()
			r.Close()
		}()
		n, err := bufcopy.Discard(host, buf)
		if err != nil || n != benchBytes {
			b.Fatalf("got %d bytes, %v", n, err)
		}
	}
}

// reportCPU reports the CPU time the whole process (agent side, client,
// writer, garbage collector) spent per MB moved, as cpu-ms/MB (on a
// machine shared with other work, wall-clock MB/s swing with the load,
// while the CPU a path needs per byte swings less), and the minor page
// faults per MB. Call the returned func when the loop is done.
func reportCPU(b *testing.B) func() {
	startCPU, startFaults := usage()
	return func() {
		if b.N == 0 {
			return
		}
		cpu, faults := usage()
		mb := float64(b.N) * benchBytes / 1e6
		b.ReportMetric(float64(cpu-startCPU)/1e6/mb, "cpu-ms/MB")
		b.ReportMetric(float64(faults-startFaults)/mb, "faults/MB")
	}
}

// usage is this process's user+system CPU time and its count of minor
// page faults (each fresh page of a large allocation costs one).
func usage() (time.Duration, int64) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), ru.Minflt
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
