package server

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/keelvm/keel/agent/metrics"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/protocol/readstream"
)

// generatedOnly answers ReadStdout/ReadStderr through the generated
// handler signature only. Everything else is left nil (never called).
type generatedOnly struct {
	pb.AgentServiceService
}

func (generatedOnly) ReadStdout(_ context.Context, r *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error) {
	return &pb.ReadStreamResponse{Data: []byte("generated:" + r.ContainerId)}, nil
}

func (generatedOnly) ReadStderr(_ context.Context, r *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error) {
	return nil, status.Error(codes.NotFound, "generated stderr")
}

// encoded also implements EncodedStreamReader; its generated handlers
// answer something else, so a test sees which one ttrpc called.
type encoded struct {
	generatedOnly
	payload []byte
}

func (e encoded) ReadStdoutEncoded(_ context.Context, r *pb.ReadStreamRequest) (proto.Message, error) {
	if r.Len == 0 {
		return nil, status.Error(codes.InvalidArgument, "len: must be > 0")
	}
	buf := make([]byte, readstream.Headroom+min(int(r.Len), len(e.payload)))
	copy(buf[readstream.Headroom:], e.payload)
	return readstream.Encode(buf)
}

func (encoded) ReadStderrEncoded(_ context.Context, r *pb.ReadStreamRequest) (proto.Message, error) {
	if r.ExecId == "panic" {
		panic("handler bug")
	}
	return &pb.ReadStreamResponse{}, nil // end of stream
}

type health struct{ pb.HealthService }

// serve runs New(agent) on a unix socket and returns a client.
func serve(t *testing.T, agent pb.AgentServiceService, m *metrics.Registry) pb.AgentServiceService {
	t.Helper()
	return serveOpts(t, agent, m)
}

// serveOpts is serve with options for New.
func serveOpts(t *testing.T, agent pb.AgentServiceService, m *metrics.Registry, opts ...Option) pb.AgentServiceService {
	t.Helper()
	s, err := New(agent, health{}, m, slog.New(slog.DiscardHandler), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return pb.NewAgentServiceClient(serveUnix(t, s)())
}

// A service that implements EncodedStreamReader has ReadStdout and
// ReadStderr served by it (the data arrives intact, errors keep their
// code, a panic is still recovered and counted); one that does not keeps
// its generated handlers.
func TestEncodedStreamReaderServesReads(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	payload := bytes.Repeat([]byte("0123456789abcdef"), 5000) // 80,000 bytes: a 3-byte varint
	m := metrics.New()
	c := serve(t, encoded{payload: payload}, m)
	for _, ln := range []uint32{1, 32 << 10, 1 << 20} {
		r, err := c.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: "c", Len: ln})
		if err != nil {
			t.Fatal(err)
		}
		if want := payload[:min(int(ln), len(payload))]; !bytes.Equal(r.Data, want) {
			t.Fatalf("len %d: got %d bytes, want %d bytes of the encoded handler", ln, len(r.Data), len(want))
		}
	}
	if _, err := c.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: "c"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("len 0: %v, want InvalidArgument", err)
	}
	r, err := c.ReadStderr(ctx, &pb.ReadStreamRequest{ContainerId: "c", Len: 10})
	if err != nil || len(r.Data) != 0 {
		t.Fatalf("stderr end of stream: %v, %d bytes", err, len(r.Data))
	}
	_, err = c.ReadStderr(ctx, &pb.ReadStreamRequest{ContainerId: "c", ExecId: "panic", Len: 10})
	if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "handler bug") {
		t.Fatalf("panicking handler: %v, want Internal naming the panic", err)
	}
	if out := m.Render(); !strings.Contains(out, "ReadStdout") || !strings.Contains(out, "ReadStderr") {
		t.Fatalf("metrics do not count the encoded reads:\n%s", out)
	}

	plain := serve(t, generatedOnly{}, nil)
	r, err = plain.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: "c", Len: 10})
	if err != nil || string(r.Data) != "generated:c" {
		t.Fatalf("generated ReadStdout: %q, %v", r.GetData(), err)
	}
	if _, err := plain.ReadStderr(ctx, &pb.ReadStreamRequest{Len: 10}); status.Code(err) != codes.NotFound {
		t.Fatalf("generated ReadStderr: %v", err)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("timed out")
	}
}
