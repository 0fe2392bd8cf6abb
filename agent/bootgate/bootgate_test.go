package bootgate

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/errdefs"
)

func TestWaitBlocksUntilOpen(t *testing.T) {
	g := New(time.Minute)
	got := make(chan error, 1)
	go func() { got <- g.Wait(context.Background()) }()
	select {
	case err := <-got:
		t.Fatalf("Wait returned %v before Open", err)
	case <-time.After(100 * time.Millisecond):
	}
	g.Open(nil)
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("Wait after Open(nil): %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait still blocked 10 s after Open")
	}
	if err := g.Wait(context.Background()); err != nil {
		t.Fatalf("Wait on an open gate: %v", err)
	}
}

func TestFailedBootIsUnavailable(t *testing.T) {
	g := New(time.Minute)
	g.Open(errors.New("mkdir /sys/fs/cgroup/keel-agent: read-only file system"))
	g.Open(nil) // only the first Open counts
	err := g.Wait(context.Background())
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "read-only file system") {
		t.Fatalf("Wait after a failed boot: %v, want Unavailable naming the failure", err)
	}
}

func TestWaitTimesOut(t *testing.T) {
	g := New(50 * time.Millisecond)
	start := time.Now()
	err := g.Wait(context.Background())
	if !errors.Is(err, errdefs.ErrDeadlineExceeded) || !strings.Contains(err.Error(), "did not finish") {
		t.Fatalf("Wait on a gate never opened: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Fatalf("Wait gave up after %v, before the 50ms timeout", d)
	}
}

func TestWaitHonoursContext(t *testing.T) {
	g := New(time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := g.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with an expiring context: %v", err)
	}
}

func TestOpened(t *testing.T) {
	if err := Opened().Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestStuckFinishFailsGate: a boot step that never returns fails the gate
// after its timeout, so waiters get Unavailable (not DeadlineExceeded for
// good), Failed says so, and Finish returns for the caller to power off.
func TestStuckFinishFailsGate(t *testing.T) {
	g := New(200 * time.Millisecond)
	if g.Failed() {
		t.Fatal("closed gate reports Failed")
	}
	stuck := make(chan struct{})
	defer close(stuck)
	done := make(chan error, 1)
	go func() { done <- g.Finish(func() error { <-stuck; return nil }) }()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Finish still blocked 30 s past a 200 ms timeout")
	}
	if err == nil || !strings.Contains(err.Error(), "did not finish within 200ms") {
		t.Fatalf("Finish of a stuck boot = %v, want an error saying it did not finish", err)
	}
	if !g.Failed() {
		t.Fatal("gate not Failed after a stuck boot")
	}
	if werr := g.Wait(context.Background()); !errors.Is(werr, errdefs.ErrUnavailable) || !strings.Contains(werr.Error(), "did not finish") {
		t.Fatalf("Wait after a stuck boot = %v, want Unavailable naming it", werr)
	}
}

func TestFinishOpensWithResult(t *testing.T) {
	g := New(time.Minute)
	if err := g.Finish(func() error { return nil }); err != nil || g.Failed() {
		t.Fatalf("Finish(ok) = %v, Failed %v", err, g.Failed())
	}
	if err := g.Wait(context.Background()); err != nil {
		t.Fatalf("Wait after a finished boot: %v", err)
	}
	g = New(time.Minute)
	boom := errors.New("sethostname: invalid argument")
	if err := g.Finish(func() error { return boom }); !errors.Is(err, boom) || !g.Failed() {
		t.Fatalf("Finish(failing) = %v, Failed %v", err, g.Failed())
	}
}
