package service

import (
	"context"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/bootgate"
	pb "github.com/keelvm/keel/protocol/grpc"
)

// TestHealthNotServingAfterStuckBoot: while the boot runs Health says
// SERVING (RPCs wait for it); once a stuck boot step failed the gate the
// guest is going down and Health says NOT_SERVING.
func TestHealthNotServingAfterStuckBoot(t *testing.T) {
	g := bootgate.New(100 * time.Millisecond)
	h := Health{Boot: g}
	check := func() pb.HealthCheckResponse_ServingStatus {
		t.Helper()
		r, err := h.Check(context.Background(), &pb.CheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return r.Status
	}
	if s := check(); s != pb.HealthCheckResponse_SERVING {
		t.Fatalf("Health during the boot = %v, want SERVING", s)
	}
	stuck := make(chan struct{})
	defer close(stuck)
	if err := g.Finish(func() error { <-stuck; return nil }); err == nil {
		t.Fatal("Finish of a stuck boot succeeded")
	}
	if s := check(); s != pb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Health after a stuck boot = %v, want NOT_SERVING", s)
	}
	ok := bootgate.New(time.Minute)
	if err := ok.Finish(func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	if r, _ := (Health{Boot: ok}).Check(context.Background(), &pb.CheckRequest{}); r.Status != pb.HealthCheckResponse_SERVING {
		t.Fatalf("Health after a finished boot = %v, want SERVING", r.Status)
	}
}
