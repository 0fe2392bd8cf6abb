package bootgate

import (
	"context"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
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

// stuckFor returns the duration after "what for " in msg.
func stuckFor(t *testing.T, msg, what string) time.Duration {
	t.Helper()
	m := regexp.MustCompile(regexp.QuoteMeta(what) + ` for ([0-9.]+[a-zµ]+)`).FindStringSubmatch(msg)
	if m == nil {
		t.Fatalf("%q does not say %q for how long", msg, what)
	}
	d, err := time.ParseDuration(m[1])
	if err != nil {
		t.Fatalf("%q: %v", msg, err)
	}
	return d
}

// TestStuckBootNamesStep: a boot not finished within the gate's timeout
// fails the gate with an error (Finish's, for the power-off log line, and
// every refused RPC's) that says the boot did not finish in time and names
// the step in progress then, with how long that step has been in progress
// (growing with each refusal): the timeout bounds the whole boot, so a step
// that began after slow earlier ones is not said to have taken it all. A
// request that gave up waiting before that names the step too.
func TestStuckBootNamesStep(t *testing.T) {
	const (
		timeout = time.Second
		slow    = timeout / 2 // the earlier steps
	)
	const line = `echo "0" > /proc/self/oom_score_adj`
	g := New(timeout)
	stuck := make(chan struct{})
	defer close(stuck)
	done := make(chan error, 1)
	var stepAt atomic.Int64 // unix ns just before the stuck step began
	go func() {
		done <- g.Finish(func() error {
			g.Step("mkdir -p /sys/fs/cgroup/keel-agent")
			time.Sleep(slow)
			stepAt.Store(time.Now().UnixNano())
			g.Step(line)
			<-stuck
			return nil
		})
	}()
	// A waiter whose own bound ends first, mid-step.
	early := New(50 * time.Millisecond)
	early.Step(line)
	if err := early.Wait(context.Background()); !errors.Is(err, errdefs.ErrDeadlineExceeded) ||
		!strings.Contains(err.Error(), strconv.Quote(line)) || stuckFor(t, err.Error(), "in progress") < 50*time.Millisecond {
		t.Fatalf("Wait past its bound mid-step = %v, want DeadlineExceeded naming the step and its time", err)
	}
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Finish still blocked 30 s past its timeout")
	}
	if !strings.HasPrefix(err.Error(), "the boot did not finish within 1s; ") || !strings.Contains(err.Error(), strconv.Quote(line)) {
		t.Fatalf("Finish of a boot stuck in a step = %v, want it to say the boot did not finish in time and name the step", err)
	}
	// The step began at least slow after the boot: its own time is at
	// most the time since stepAt (the whole boot's is slow more). No bound
	// on how late this goroutine runs: on a loaded machine it may be late.
	if d, own := stuckFor(t, err.Error(), "in progress"), time.Since(time.Unix(0, stepAt.Load())); d <= 0 || d > own+10*time.Millisecond {
		t.Fatalf("Finish of a boot stuck in a step begun %v into it = %v: the step's time in progress is not its own (%v since it began)", slow, err, own)
	}
	first := g.Wait(context.Background())
	if !errors.Is(first, errdefs.ErrUnavailable) || !strings.Contains(first.Error(), strconv.Quote(line)) {
		t.Fatalf("Wait after a stuck boot = %v, want Unavailable naming the step", first)
	}
	time.Sleep(200 * time.Millisecond)
	later := g.Wait(context.Background())
	if d0, d1 := stuckFor(t, first.Error(), "in progress"), stuckFor(t, later.Error(), "in progress"); d1 < d0+150*time.Millisecond {
		t.Fatalf("in progress for %v, then %v 200 ms later: the refusal does not say for how long by now", d0, d1)
	}
}

// TestStuckBootNoStep: a boot that reported no step says so.
func TestStuckBootNoStep(t *testing.T) {
	g := New(50 * time.Millisecond)
	stuck := make(chan struct{})
	defer close(stuck)
	err := g.Finish(func() error { <-stuck; return nil })
	if err == nil || err.Error() != "the boot did not finish within 50ms; no boot step reported" {
		t.Fatalf("Finish of a boot stuck before any step = %v", err)
	}
}

// failingStep is an error that names its step, as init/step's does.
type failingStep struct{ line string }

func (e failingStep) Error() string    { return "boot step " + strconv.Quote(e.line) + ": no such device" }
func (e failingStep) BootStep() string { return e.line }

// TestFailedBootNamesStep: a boot that fails names the step it failed in,
// once: the step in progress is added to an error that does not name it.
func TestFailedBootNamesStep(t *testing.T) {
	g := New(time.Minute)
	err := g.Finish(func() error {
		g.Step("ip link set lo up")
		g.Step("hostname pod-1")
		return errors.New("sethostname: invalid argument")
	})
	werr := g.Wait(context.Background())
	for _, e := range []error{err, werr} {
		if !strings.Contains(e.Error(), `"hostname pod-1"`) || !strings.Contains(e.Error(), "invalid argument") {
			t.Fatalf("failed boot: %v, want the failed step named", e)
		}
	}
	g = New(time.Minute)
	err = g.Finish(func() error {
		g.Step("ip link set lo up")
		return failingStep{"ip link set lo up"}
	})
	if n := strings.Count(err.Error(), "ip link set lo up"); n != 1 {
		t.Fatalf("failed boot: %v names the step %d times, want once", err, n)
	}
}
