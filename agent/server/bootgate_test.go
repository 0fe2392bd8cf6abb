package server

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keelvm/keel/agent/bootgate"
	pb "github.com/keelvm/keel/protocol/grpc"
)

// counting answers GetGuestDetails and counts the handlers that ran.
type counting struct {
	pb.AgentServiceService
	ran atomic.Int64
}

func (c *counting) GetGuestDetails(context.Context, *pb.GuestDetailsRequest) (*pb.GuestDetailsResponse, error) {
	c.ran.Add(1)
	return &pb.GuestDetailsResponse{MemBlockSizeBytes: 42}, nil
}

// gated serves agent behind g on a unix socket and returns a ttrpc client.
func gated(t *testing.T, agent pb.AgentServiceService, g *bootgate.Gate) *ttrpc.Client {
	t.Helper()
	s, err := New(agent, serving{}, nil, slog.New(slog.DiscardHandler), WithBootGate(g))
	if err != nil {
		t.Fatal(err)
	}
	return serveUnix(t, s)()
}

// Before the boot finished, Health answers at once while any other
// request waits without reaching its handler; once the gate opens the
// waiting request is served.
func TestBootGateHoldsRequestsUntilBootDone(t *testing.T) {
	agent := &counting{}
	g := bootgate.New(time.Minute)
	c := gated(t, agent, g)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	hc, err := pb.NewHealthClient(c).Check(ctx, &pb.CheckRequest{})
	if err != nil || hc.Status != pb.HealthCheckResponse_SERVING {
		t.Fatalf("Health.Check before the boot finished: %v, %v; want SERVING at once", hc, err)
	}
	got := make(chan error, 1)
	go func() {
		d, err := pb.NewAgentServiceClient(c).GetGuestDetails(ctx, &pb.GuestDetailsRequest{})
		if err == nil && d.MemBlockSizeBytes != 42 {
			err = errors.New("wrong reply")
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("GetGuestDetails answered (%v) before the boot finished", err)
	case <-time.After(300 * time.Millisecond):
	}
	if n := agent.ran.Load(); n != 0 {
		t.Fatalf("%d handlers ran before the boot finished", n)
	}
	g.Open(nil)
	if err := <-got; err != nil {
		t.Fatalf("GetGuestDetails after the boot finished: %v", err)
	}
	if n := agent.ran.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
}

// A failed boot answers Unavailable naming the failure, a boot that never
// finishes DeadlineExceeded; the handler never runs.
func TestBootGateFailures(t *testing.T) {
	for _, tc := range []struct {
		name string
		gate func() *bootgate.Gate
		code codes.Code
		msg  string
	}{
		{"failed", func() *bootgate.Gate {
			g := bootgate.New(time.Minute)
			g.Open(errors.New("ip link set lo up: no such device"))
			return g
		}, codes.Unavailable, "ip link set lo up: no such device"},
		{"stuck", func() *bootgate.Gate { return bootgate.New(100 * time.Millisecond) }, codes.DeadlineExceeded, "did not finish within 100ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			agent := &counting{}
			c := gated(t, agent, tc.gate())
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := pb.NewAgentServiceClient(c).GetGuestDetails(ctx, &pb.GuestDetailsRequest{})
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), "GetGuestDetails") {
				t.Fatalf("GetGuestDetails: %v; want %v naming the method and %q", err, tc.code, tc.msg)
			}
			if n := agent.ran.Load(); n != 0 {
				t.Fatalf("handler ran %d times", n)
			}
		})
	}
}
