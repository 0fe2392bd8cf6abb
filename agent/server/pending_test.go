package server

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keelvm/keel/agent/metrics"
	pb "github.com/keelvm/keel/protocol/grpc"
)

// longPoll answers WaitProcess only when the caller gives up, like a
// WaitProcess for a process that never exits; it counts the handlers that
// ran, which is the state a pending request holds in the agent.
type longPoll struct {
	pb.AgentServiceService
	entered atomic.Int64
}

func (p *longPoll) WaitProcess(ctx context.Context, _ *pb.WaitProcessRequest) (*pb.WaitProcessResponse, error) {
	p.entered.Add(1)
	<-ctx.Done()
	return nil, status.FromContextError(ctx.Err()).Err()
}

type serving struct{}

func (serving) Check(context.Context, *pb.CheckRequest) (*pb.HealthCheckResponse, error) {
	return &pb.HealthCheckResponse{Status: pb.HealthCheckResponse_SERVING}, nil
}

func (serving) Version(context.Context, *pb.CheckRequest) (*pb.VersionCheckResponse, error) {
	return &pb.VersionCheckResponse{}, nil
}

func TestDefaultMaxPending(t *testing.T) {
	s, err := New(&longPoll{}, serving{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.MaxPending() != MaxPendingRequests || MaxPendingRequests != 4096 {
		t.Fatalf("MaxPending() = %d, want MaxPendingRequests (4,096)", s.MaxPending())
	}
}

// Issue 11 item 4: pending long polls spread over several connections stop
// at the agent-wide cap: the handlers (and goroutines) held are counted, a
// request over the cap is answered ResourceExhausted at once naming the
// cap, Health keeps answering within 1 s, and once the pollers go away new
// requests run again.
func TestAgentWideCapOnPendingRequests(t *testing.T) {
	const (
		limit   = 64
		conns   = 4
		perConn = 40 // 160 long polls, 2.5 times the cap
	)
	agent := &longPoll{}
	m := metrics.New()
	s, err := New(agent, serving{}, m, slog.New(slog.DiscardHandler), WithMaxPending(limit))
	if err != nil {
		t.Fatal(err)
	}
	dial := serveUnix(t, s)
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				p, r := s.Pending()
				t.Fatalf("%s: not reached (pending %d, rejected %d, handlers entered %d)", what, p, r, agent.entered.Load())
			}
		}
	}

	goroutinesBefore := runtime.NumGoroutine()
	pollCtx, stopPolling := context.WithCancel(context.Background())
	defer stopPolling()
	var wg sync.WaitGroup
	errs := make(chan error, conns*perConn)
	var clients []pb.AgentServiceService
	var flood []*ttrpc.Client
	for range conns {
		tc := dial()
		flood = append(flood, tc)
		c := pb.NewAgentServiceClient(tc)
		clients = append(clients, c)
		for range perConn {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := c.WaitProcess(pollCtx, &pb.WaitProcessRequest{ContainerId: "c"})
				errs <- err
			}()
		}
	}
	waitFor("cap reached and the rest rejected", func() bool {
		p, r := s.Pending()
		return p == limit && r == conns*perConn-limit
	})
	// The rejected ones came back at once; none ran a handler.
	for range conns*perConn - limit {
		err := <-errs
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), fmt.Sprintf("%d requests already pending", limit)) {
			t.Fatalf("over the cap: %v, want ResourceExhausted naming the limit %d", err, limit)
		}
	}
	// The server counts a request pending when it admits it, before the
	// handler goroutine is scheduled: on a loaded machine the last admitted
	// handlers may not have been entered yet. Wait for them, then check no
	// more than the cap ran (the rejected ones have all been answered, so
	// none of them can still enter one).
	waitFor("every admitted handler entered", func() bool { return agent.entered.Load() >= limit })
	if n := agent.entered.Load(); n != limit {
		t.Fatalf("%d handlers ran, want exactly the cap %d", n, limit)
	}
	// Memory is bounded by the cap: a goroutine per admitted request on
	// each side (poller and handler) plus a few per connection, not one
	// per request asked (160 pollers would already be 2.5 times the cap).
	if g := runtime.NumGoroutine() - goroutinesBefore; g > 2*limit+8*conns {
		t.Fatalf("%d goroutines more than before the flood, want at most %d", g, 2*limit+8*conns)
	} else {
		t.Logf("%d long polls asked: %d pending, %d rejected, %d goroutines more", conns*perConn, limit, conns*perConn-limit, g)
	}

	// One more, on a connection of the flood: answered at once.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_, err = clients[0].WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: "c"})
	cancel()
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "64 requests already pending") || !strings.Contains(err.Error(), "MaxPendingRequests") {
		t.Fatalf("request over the cap: %v, want ResourceExhausted naming MaxPendingRequests (64)", err)
	}
	// Health is exempt: within 5 s, on a flooded connection and a new one.
	// Not exempt, it would be rejected or wait behind long polls that never
	// end; 5 s (not 1 s) leaves room for a loaded CI machine.
	for i, tc := range []*ttrpc.Client{dial(), dial()} {
		h := pb.NewHealthClient(tc)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := h.Check(ctx, &pb.CheckRequest{})
		cancel()
		if err != nil || r.Status != pb.HealthCheckResponse_SERVING {
			t.Fatalf("health %d at the cap: %v, %v (want SERVING within 5 s)", i, r, err)
		}
	}
	out := m.Render()
	for _, want := range []string{"keel_rpcs_pending 64\n", fmt.Sprintf("keel_rpcs_rejected %d\n", conns*perConn-limit+1)} {
		if !strings.Contains(out, want) {
			t.Fatalf("metrics lack %q:\n%s", want, out)
		}
	}

	// The pollers go away (their connections close: a ttrpc client cannot
	// cancel a call): the count drops to zero and requests run again.
	stopPolling()
	wg.Wait()
	for _, tc := range flood {
		tc.Close()
	}
	waitFor("pending back to 0", func() bool { p, _ := s.Pending(); return p == 0 })
	ctx, cancel = context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() {
		_, err := pb.NewAgentServiceClient(dial()).WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: "c"})
		res <- err
	}()
	waitFor("a new request admitted", func() bool { return agent.entered.Load() == limit+1 })
	cancel()
	if err := <-res; status.Code(err) == codes.ResourceExhausted {
		t.Fatalf("after the flood: %v", err)
	}
}
