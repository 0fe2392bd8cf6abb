// Package bootgate holds RPCs back until the guest's boot has finished.
//
// PID 1 opens its AF_VSOCK listener as soon as it can serve, and finishes
// the rest of the boot (the agent's cgroup and OOM protection, lo, the
// file-descriptor limit, hostname, entropy) right after, while the host connects: under TCG that work costs
// tens of milliseconds of code translation, which the host's connection
// set-up then overlaps. No RPC that acts on the guest may see it half set
// up, so the server makes every request but the liveness probe wait here
// until the boot finished; a boot that fails or does not finish in time
// answers with an error naming why, never a half-served request.
package bootgate

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/keelvm/keel/agent/errdefs"
)

// DefaultTimeout bounds how long a request waits for the boot: generous
// against a loaded TCG host (the finishing steps take well under a second
// there), short enough that a stuck boot is reported rather than hidden.
const DefaultTimeout = 60 * time.Second

// Gate is closed until Open. The zero value is not usable; use New.
type Gate struct {
	timeout time.Duration
	once    sync.Once
	done    chan struct{}
	err     error // set before done is closed

	mu        sync.Mutex
	step      string    // the boot step in progress (Step)
	stepSince time.Time // when it began
}

// Step records that the boot step named (a shell line like "ip link set lo
// up") begins now: a stuck or failed boot's errors name it.
func (g *Gate) Step(name string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.step, g.stepSince = name, time.Now()
}

// current returns the step in progress and when it began ("" when none was
// reported).
func (g *Gate) current() (string, time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.step, g.stepSince
}

// inProgress says which step the boot is in and for how long, for errors.
func (g *Gate) inProgress() string {
	name, since := g.current()
	if name == "" {
		return "no boot step reported yet"
	}
	return fmt.Sprintf("boot step %q in progress for %v", name, time.Since(since).Round(time.Millisecond))
}

// stuckError is the gate's error once the boot has not finished within the
// gate's timeout. The timeout bounds the whole of Finish, not one step: the
// error names the step in progress then (which may have begun just before,
// after slow earlier steps) and for how long it has been in progress. Its
// text is made when it is read, so every refusal says how long by then.
type stuckError struct {
	step    string
	since   time.Time
	timeout time.Duration
}

func (e *stuckError) Error() string {
	if e.step == "" {
		return fmt.Sprintf("the boot did not finish within %v; no boot step reported", e.timeout)
	}
	return fmt.Sprintf("the boot did not finish within %v; boot step %q in progress for %v (since %s)",
		e.timeout, e.step, time.Since(e.since).Round(time.Millisecond), e.since.UTC().Format(time.RFC3339))
}

// namesStep is an error that names the boot step it comes from
// (init/step.Error).
type namesStep interface{ BootStep() string }

// New returns a closed gate whose waiters give up after timeout (<= 0:
// DefaultTimeout).
func New(timeout time.Duration) *Gate {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Gate{timeout: timeout, done: make(chan struct{})}
}

// Opened returns an open gate (host mode, tests: nothing left to wait for).
func Opened() *Gate {
	g := New(0)
	g.Open(nil)
	return g
}

// Open releases the waiters: with err nil they proceed, otherwise they
// (and every later Wait) fail with err. Only the first call counts.
func (g *Gate) Open(err error) {
	g.once.Do(func() {
		g.err = err
		close(g.done)
	})
}

// Wait returns nil once the boot finished. It fails with an Unavailable
// error when the boot failed, a DeadlineExceeded one when it did not finish
// within the gate's timeout, and ctx's error when ctx ends first.
func (g *Gate) Wait(ctx context.Context) error {
	select {
	case <-g.done:
		return g.result()
	default:
	}
	t := time.NewTimer(g.timeout)
	defer t.Stop()
	select {
	case <-g.done:
		return g.result()
	case <-ctx.Done():
		return fmt.Errorf("waiting for the guest boot to finish: %w", ctx.Err())
	case <-t.C:
		return fmt.Errorf("the guest boot did not finish within %v (%s): %w", g.timeout, g.inProgress(), errdefs.ErrDeadlineExceeded)
	}
}

// Failed reports whether the gate opened with an error: the boot failed or
// did not finish in time (the liveness probe then says NOT_SERVING).
func (g *Gate) Failed() bool {
	select {
	case <-g.done:
		return g.err != nil
	default:
		return false
	}
}

// Finish runs the rest of the boot (finish) and opens g with its result.
// finish reports each step it begins with g.Step; a failure names the step
// it happened in. A finish that has not returned within the gate's timeout
// fails the gate once, with an error naming the step in progress then and
// for how long it has been in progress, and Finish returns that error at once (the
// caller powers off as for a failed boot): a stuck boot step must not leave
// the guest up answering Health SERVING and every other RPC
// DeadlineExceeded for good. The timeout bounds the whole boot, not each
// step.
func (g *Gate) Finish(finish func() error) error {
	res := make(chan error, 1)
	go func() { res <- finish() }()
	t := time.NewTimer(g.timeout)
	defer t.Stop()
	var err error
	select {
	case err = <-res:
		var ns namesStep
		if name, _ := g.current(); err != nil && name != "" && !errors.As(err, &ns) {
			err = fmt.Errorf("boot step %q: %w", name, err)
		}
	case <-t.C:
		name, since := g.current()
		err = &stuckError{step: name, since: since, timeout: g.timeout}
	}
	g.Open(err)
	return err
}

func (g *Gate) result() error {
	if g.err != nil {
		return fmt.Errorf("the guest boot failed: %v: %w", g.err, errdefs.ErrUnavailable)
	}
	return nil
}
