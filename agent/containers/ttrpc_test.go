package containers_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/keelvm/keel/agent/server"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/protocol/readstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestTTRPCWire drives the handlers through a real ttrpc server and client
// over a unix socket: requests, replies and gRPC status codes survive the
// wire.
func TestTTRPCWire(t *testing.T) {
	r := newRPC(t)
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	pb.RegisterAgentServiceService(srv, assembled{RPC: r})
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	defer srv.Close()
	conn, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tc := ttrpc.NewClient(conn)
	defer tc.Close()
	c := pb.NewAgentServiceClient(tc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if _, err := c.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "w", OCI: spec("/bin/sh", "-c", "echo over-the-wire; exit 4")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "w"}); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	for {
		resp, err := c.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: "w", Len: 1024})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Data) == 0 {
			break
		}
		out.Write(resp.Data)
	}
	w, err := c.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: "w"})
	if err != nil || w.Status != 4 || out.String() != "over-the-wire\n" {
		t.Fatalf("wait %v %v, stdout %q", w, err, out.String())
	}
	_, err = c.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "a/b", OCI: spec("/bin/true")})
	if st, _ := status.FromError(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), `container_id "a/b"`) {
		t.Fatalf("bad id over the wire: %v", err)
	}
	if _, err := c.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: "w"}); err != nil {
		t.Fatal(err)
	}
}

// TestTerminalExec: an exec with a pty gets a tty, and the size set by
// TtyWinResize is the size the process reads back from its terminal.
func TestTerminalExec(t *testing.T) {
	r := newRPC(t)
	ctx := context.Background()
	must := noErr(t)
	must(r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "t", OCI: spec("/bin/sleep", "1000")}))
	must(r.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "t"}))
	p := &pb.Process{Terminal: true, Args: []string{"/bin/sh", "-c", "read x; test -t 0 && echo tty:$x; echo size:$(stty size)"}, Cwd: "/", Env: []string{"PATH=/bin"}, User: &pb.User{}}
	must(r.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: "t", ExecId: "tty", Process: p}))
	// A size a winsize cannot hold is the host's mistake, not Internal.
	if _, err := r.TtyWinResize(ctx, &pb.TtyWinResizeRequest{ContainerId: "t", ExecId: "tty", Row: 70000, Column: 100}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "row 70000") {
		t.Fatalf("resize to 70000 rows: %v, want InvalidArgument naming row", err)
	}
	must(r.TtyWinResize(ctx, &pb.TtyWinResizeRequest{ContainerId: "t", ExecId: "tty", Row: 40, Column: 100}))
	must(r.WriteStdin(ctx, &pb.WriteStreamRequest{ContainerId: "t", ExecId: "tty", Data: []byte("yes\n")}))
	out := readAll(t, r, "t", "tty")
	if !strings.Contains(out, "tty:yes") || !strings.Contains(out, "size:40 100\r\n") {
		t.Errorf("tty output %q, want tty:yes and size:40 100", out)
	}
	if st := wait(t, r, "t", "tty"); st != 0 {
		t.Errorf("status %d", st)
	}
}

// TestTerminalInit: a container whose init has a terminal.
func TestTerminalInit(t *testing.T) {
	r := newRPC(t)
	ctx := context.Background()
	must := noErr(t)
	s := spec("/bin/sh", "-c", "test -t 0 && test -t 1 && echo init-tty; echo size:$(stty size)")
	s.Process.Terminal = true
	s.Process.ConsoleSize = &pb.Box{Height: 30, Width: 90}
	must(r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "ti", OCI: s}))
	must(r.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "ti"}))
	// The spec's console size is the size the process reads back.
	if out := readAll(t, r, "ti", ""); !strings.Contains(out, "init-tty") || !strings.Contains(out, "size:30 90\r\n") {
		t.Errorf("init tty output %q, want init-tty and size:30 90", out)
	}
	if st := wait(t, r, "ti", ""); st != 0 {
		t.Errorf("status %d", st)
	}
	if resp, err := r.ReadStderr(ctx, &pb.ReadStreamRequest{ContainerId: "ti", Len: 10}); err != nil || len(resp.Data) != 0 {
		t.Errorf("stderr of a terminal: %v %v", resp, err)
	}
}

// TestTTRPCEncodedReads serves the handlers with agent/server, as the agent
// does, so ReadStdout and ReadStderr are answered by agent/streamread (the
// data read from the pipe into the buffer the reply frame is written
// from): what a Go client
// decodes is exactly what the process wrote, on both streams, and a read
// of Kata's 32 KiB that finds more waiting returns readstream.DataLen's
// size-class-fitting 32,754 bytes (only the encoded path trims).
func TestTTRPCEncodedReads(t *testing.T) {
	r := newRPC(t)
	srv, err := server.New(assembled{RPC: r}, nil, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	l, err := server.Listen("unix://" + filepath.Join(t.TempDir(), "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	defer srv.Close()
	conn, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tc := ttrpc.NewClient(conn)
	defer tc.Close()
	c := pb.NewAgentServiceClient(tc)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// 62,893 bytes of stdout fit the default 64 KiB pipe: the process
	// exits before anything is read, so the first read finds it all.
	var want, wantErr strings.Builder
	for i := 1; i <= 12000; i++ {
		fmt.Fprintf(&want, "%d\n", i)
	}
	for i := 1; i <= 300; i++ {
		fmt.Fprintf(&wantErr, "%d\n", i)
	}
	if _, err := c.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "e", OCI: spec("/bin/sh", "-c", "seq 1 12000; seq 1 300 >&2")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "e"}); err != nil {
		t.Fatal(err)
	}
	if w, err := c.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: "e"}); err != nil || w.Status != 0 {
		t.Fatalf("wait: %v %v", w, err)
	}
	read := func(rd func(context.Context, *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error), ln uint32) (string, []int) {
		var out strings.Builder
		var sizes []int
		for {
			resp, err := rd(ctx, &pb.ReadStreamRequest{ContainerId: "e", Len: ln})
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Data) == 0 {
				return out.String(), sizes
			}
			sizes = append(sizes, len(resp.Data))
			out.Write(resp.Data)
		}
	}
	got, sizes := read(c.ReadStdout, 32<<10)
	if got != want.String() {
		t.Fatalf("stdout: %d bytes, want %d; chunks %v", len(got), want.Len(), sizes)
	}
	if sizes[0] != readstream.DataLen(32<<10) || readstream.DataLen(32<<10) != 32<<10-readstream.FrameOverhead {
		t.Fatalf("first chunk of a full pipe: %d bytes, want %d (chunks %v)", sizes[0], readstream.DataLen(32<<10), sizes)
	}
	// The largest len a request can carry is clamped (to stdio.MaxReadLen),
	// not allocated: all of stderr in one answer.
	if got, sizes := read(c.ReadStderr, 1<<32-1); got != wantErr.String() || len(sizes) != 1 {
		t.Fatalf("stderr: %q in chunks %v, want %d bytes in one", got, sizes, wantErr.Len())
	}
	if _, err := c.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: "nope", Len: 10}); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown container: %v, want NotFound", err)
	}
	if _, err := c.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: "e"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("len 0: %v, want InvalidArgument", err)
	}
	if _, err := c.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: "e"}); err != nil {
		t.Fatal(err)
	}
}
