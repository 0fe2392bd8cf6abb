package attach

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/emptypb"

	pb "github.com/keelvm/keel/protocol/grpc"
)

// fakeAgent serves the stream RPCs of one process from memory: stdin is
// taken at most maxWrite bytes per WriteStdin, stdout and stderr are
// handed out in the chunks given, and WaitProcess answers once stdin was
// closed.
type fakeAgent struct {
	pb.AgentServiceService // the RPCs attach must not call panic (nil)
	maxWrite               int

	mu       sync.Mutex
	stdin    bytes.Buffer
	closes   int
	out, err []string
	resizes  []string
	signals  []uint32
	closed   chan struct{}
}

func (f *fakeAgent) WriteStdin(_ context.Context, r *pb.WriteStreamRequest) (*pb.WriteStreamResponse, error) {
	if len(r.Data) == 0 {
		panic("empty WriteStdin would close stdin")
	}
	n := min(len(r.Data), f.maxWrite)
	f.mu.Lock()
	f.stdin.Write(r.Data[:n])
	f.mu.Unlock()
	return &pb.WriteStreamResponse{Len: uint32(n)}, nil
}

func (f *fakeAgent) CloseStdin(context.Context, *pb.CloseStdinRequest) (*emptypb.Empty, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closes++
	if f.closes == 1 {
		close(f.closed)
	}
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) next(chunks *[]string) *pb.ReadStreamResponse {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(*chunks) == 0 {
		return &pb.ReadStreamResponse{}
	}
	c := (*chunks)[0]
	*chunks = (*chunks)[1:]
	return &pb.ReadStreamResponse{Data: []byte(c)}
}

func (f *fakeAgent) ReadStdout(context.Context, *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error) {
	return f.next(&f.out), nil
}

func (f *fakeAgent) ReadStderr(context.Context, *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error) {
	return f.next(&f.err), nil
}

func (f *fakeAgent) TtyWinResize(_ context.Context, r *pb.TtyWinResizeRequest) (*emptypb.Empty, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resizes = append(f.resizes, fmt.Sprintf("%s %s %dx%d", r.ContainerId, r.ExecId, r.Row, r.Column))
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) SignalProcess(_ context.Context, r *pb.SignalProcessRequest) (*emptypb.Empty, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.signals = append(f.signals, r.Signal)
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) WaitProcess(ctx context.Context, r *pb.WaitProcessRequest) (*pb.WaitProcessResponse, error) {
	select {
	case <-f.closed:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	// Let the forwarder deliver what was queued before the exit.
	time.Sleep(100 * time.Millisecond)
	return &pb.WaitProcessResponse{Status: 7}, nil
}

func TestRunStreams(t *testing.T) {
	in := strings.Repeat("0123456789", 10000) // 100 KB, many partial writes
	f := &fakeAgent{maxWrite: 1000, out: []string{"out-1 ", "out-2"}, err: []string{"err-1"}, closed: make(chan struct{})}
	var stdout, stderr bytes.Buffer
	resize := make(chan WinSize, 1)
	resize <- WinSize{Rows: 40, Cols: 120}
	sigs := make(chan os.Signal, 1)
	sigs <- syscall.SIGINT
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := Run(ctx, f, Options{
		ContainerID: "c", ExecID: "e", Stdin: strings.NewReader(in), Stdout: &stdout, Stderr: &stderr,
		Terminal: false, Resize: resize, Signals: sigs,
	})
	if err != nil || st != 7 {
		t.Fatalf("Run = %d, %v; want 7, nil", st, err)
	}
	if stdout.String() != "out-1 out-2" || stderr.String() != "err-1" {
		t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stdin.String() != in || f.closes != 1 {
		t.Errorf("stdin: %d of %d bytes arrived intact=%v, CloseStdin called %d times", f.stdin.Len(), len(in), f.stdin.String() == in, f.closes)
	}
	if len(f.resizes) != 0 {
		t.Errorf("resized a process without a terminal: %v", f.resizes)
	}
	if len(f.signals) != 1 || f.signals[0] != uint32(syscall.SIGINT) {
		t.Errorf("signals forwarded: %v, want [2]", f.signals)
	}
}

func TestRunTerminal(t *testing.T) {
	f := &fakeAgent{maxWrite: 1 << 20, out: []string{"$ "}, err: []string{"never read"}, closed: make(chan struct{})}
	resize := make(chan WinSize, 1)
	resize <- WinSize{Rows: 40, Cols: 120}
	var stdout bytes.Buffer
	st, err := Run(context.Background(), f, Options{ContainerID: "c", ExecID: "e", Stdout: &stdout, Terminal: true, Resize: resize})
	if err != nil || st != 7 {
		t.Fatalf("Run = %d, %v", st, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if stdout.String() != "$ " || len(f.err) != 1 {
		t.Errorf("stdout %q; stderr chunks left %d (a pty has no stderr to read)", stdout.String(), len(f.err))
	}
	if len(f.resizes) != 1 || f.resizes[0] != "c e 40x120" {
		t.Errorf("resizes %q, want [c e 40x120]", f.resizes)
	}
}
