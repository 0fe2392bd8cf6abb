package agentproc

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keelvm/keel/agent/connlimit"
	"github.com/keelvm/keel/agent/server"
	"github.com/keelvm/keel/protocol/client"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/promtext"
)

// Issue 11 item 4: the real agent caps requests in flight across all
// connections at server.MaxPendingRequests (4,096). 5,000 GetOOMEvent long
// polls over 5 connections (each under connlimit's per-connection cap) leave
// exactly 4,096 pending; the rest, and one more, are answered
// ResourceExhausted at once naming the limit; goroutines and memory stay
// bounded by the cap; Health answers within 1 s; once the pollers' connections
// close, requests are admitted again.
func TestAgentWideCapOnPendingRequests(t *testing.T) {
	const (
		conns   = 5
		perConn = 1000
		asked   = conns * perConn
		limit   = server.MaxPendingRequests
	)
	if perConn >= connlimit.MaxPending || asked <= limit {
		t.Fatalf("test shape: %d per connection must stay under connlimit.MaxPending %d and %d in all above %d", perConn, connlimit.MaxPending, asked, limit)
	}
	a := startAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	mc, err := client.Dial(ctx, a.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Close()
	metric := func(name string) float64 {
		t.Helper()
		r, err := mc.Agent.GetMetrics(ctx, &pb.GetMetricsRequest{})
		if err != nil {
			t.Fatalf("GetMetrics: %v", err)
		}
		v, ok := promtext.Value(r.Metrics, name)
		if !ok {
			t.Fatalf("metrics lack %s:\n%s", name, r.Metrics)
		}
		return v
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not reached (pending %v, rejected %v)", what, metric("keel_rpcs_pending"), metric("keel_rpcs_rejected"))
			}
		}
	}
	goroutines0, anon0 := metric("keel_agent_goroutines"), metric("keel_agent_anon_memory_bytes")

	var flood []*ttrpc.Client
	defer func() {
		for _, c := range flood {
			c.Close()
		}
	}()
	errs := make(chan error, asked)
	var wg sync.WaitGroup
	for range conns {
		nc, err := net.Dial("unix", a.Sock)
		if err != nil {
			t.Fatal(err)
		}
		tc := ttrpc.NewClient(nc)
		flood = append(flood, tc)
		ac := pb.NewAgentServiceClient(tc)
		for range perConn {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := ac.GetOOMEvent(ctx, &pb.GetOOMEventRequest{})
				errs <- err
			}()
		}
	}
	waitFor("cap reached, the rest rejected", func() bool {
		return metric("keel_rpcs_pending") == limit && metric("keel_rpcs_rejected") == asked-limit
	})
	for range asked - limit {
		if err := <-errs; status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), fmt.Sprintf("%d requests already pending", limit)) {
			t.Fatalf("over the cap: %v, want ResourceExhausted naming the limit %d", err, limit)
		}
	}
	goroutines, anon := metric("keel_agent_goroutines"), metric("keel_agent_anon_memory_bytes")
	perPending := (anon - anon0) / limit
	t.Logf("%d long polls asked: %d pending, %d rejected; agent goroutines %v -> %v, RssAnon %.1f -> %.1f MiB (%.1f KiB per pending request)",
		asked, limit, asked-limit, goroutines0, goroutines, anon0/(1<<20), anon/(1<<20), perPending/1024)
	// One goroutine per admitted request plus a few per connection, not
	// one per request asked.
	if g := goroutines - goroutines0; g > limit+10*conns {
		t.Fatalf("agent goroutines grew by %v for %d pending requests, want at most %d", g, limit, limit+10*conns)
	}
	// ~6.5 KiB each measured; 16 KiB each is the bound promised.
	if grew := anon - anon0; grew > limit*16<<10 {
		t.Fatalf("agent RssAnon grew %.1f MiB for %d pending requests, want at most %d MiB", grew/(1<<20), limit, limit*16>>10)
	}

	// One more over the cap, on a flooded connection: answered at once.
	_, err = pb.NewAgentServiceClient(flood[0]).GetOOMEvent(ctx, &pb.GetOOMEventRequest{})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "MaxPendingRequests") {
		t.Fatalf("request over the cap: %v, want ResourceExhausted naming MaxPendingRequests", err)
	}
	// Health is exempt from the cap: a new client's answers within 5 s.
	// Not exempt, it would be rejected or wait behind long polls that never
	// end; 5 s (not 1 s) leaves room for a loaded CI machine.
	for attempt := range 3 {
		start := time.Now()
		nc, err := net.Dial("unix", a.Sock)
		if err != nil {
			t.Fatal(err)
		}
		tc := ttrpc.NewClient(nc)
		hctx, hcancel := context.WithTimeout(ctx, 5*time.Second)
		r, err := pb.NewHealthClient(tc).Check(hctx, &pb.CheckRequest{})
		hcancel()
		tc.Close()
		if err != nil || r.Status != pb.HealthCheckResponse_SERVING {
			t.Fatalf("health %d at the cap after %v: %v, %v (want SERVING within 5 s)", attempt, time.Since(start), r, err)
		}
		t.Logf("health %d at the cap: SERVING in %v", attempt, time.Since(start))
	}

	// The pollers go away: their connections close, the agent drops their
	// requests and admits new ones.
	for _, c := range flood {
		c.Close()
	}
	wg.Wait()
	waitFor("pending back to 0", func() bool { return metric("keel_rpcs_pending") == 0 })
	// A new long poll is admitted: counted as pending until its client
	// goes away, not answered ResourceExhausted.
	nc, err := net.Dial("unix", a.Sock)
	if err != nil {
		t.Fatal(err)
	}
	poller := ttrpc.NewClient(nc)
	res := make(chan error, 1)
	go func() {
		_, err := pb.NewAgentServiceClient(poller).GetOOMEvent(ctx, &pb.GetOOMEventRequest{})
		res <- err
	}()
	waitFor("a new request admitted", func() bool { return metric("keel_rpcs_pending") == 1 })
	poller.Close()
	if err := <-res; status.Code(err) == codes.ResourceExhausted || err == nil {
		t.Fatalf("GetOOMEvent after the flood: %v, want it admitted until its connection closed", err)
	}
	alive(t, a)
}
