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
}

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
		return fmt.Errorf("the guest boot did not finish within %v: %w", g.timeout, errdefs.ErrDeadlineExceeded)
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
// A finish that has not returned within the gate's timeout fails the gate
// once, with an error saying so, and Finish returns that error at once (the
// caller powers off as for a failed boot): a stuck boot step must not leave
// the guest up answering Health SERVING and every other RPC
// DeadlineExceeded for good.
func (g *Gate) Finish(finish func() error) error {
	res := make(chan error, 1)
	go func() { res <- finish() }()
	t := time.NewTimer(g.timeout)
	defer t.Stop()
	var err error
	select {
	case err = <-res:
	case <-t.C:
		err = fmt.Errorf("a boot step did not finish within %v", g.timeout)
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
