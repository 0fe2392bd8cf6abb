// Package kernelcheck reports, once per guest life, which kernel options
// Keel needs the running kernel lacks, as the lines GetGuestDetails puts in
// AgentDetails.extra_features.
//
// The running kernel's configuration never changes while the guest lives,
// yet reading it means gunzipping /proc/config.gz: under TCG the first
// time costs tens to hundreds of milliseconds of code translation, which
// the first GetGuestDetails of every sandbox used to pay, and every later
// one paid the scan again. The agent starts the check in the background as
// soon as the boot gate opens (off the boot's own critical path) and
// GetGuestDetails waits for that one result, as long as its context lets
// it.
//
// Background work still shares the guest's one vCPU with the RPCs Kata's
// runtime sends right after the boot (UpdateInterface, CreateSandbox...),
// so the scan yields to other goroutines between chunks of a few KiB. It
// runs at the agent's normal priority: a thread at SCHED_IDLE would keep
// its Go scheduler slot (the only one on a one-vCPU guest) while the
// kernel leaves it waiting behind any busy process, stalling every RPC,
// the reaper and the GC with it (measured: 555 ms pauses, the check not
// done after 60 s beside one busy loop).
package kernelcheck

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync"

	"github.com/keelvm/keel/kernel-config/required"
)

// Check is what the report runs: Running in the agent.
type Check func() ([]required.Missing, error)

// Report is the one result of a Check. The zero value is not usable; use
// New.
type Report struct {
	check Check
	once  sync.Once
	done  chan struct{}
	lines []string // set before done is closed, never changed after
}

// New returns a report of check, not started yet.
func New(check Check) *Report {
	return &Report{check: check, done: make(chan struct{})}
}

// Start runs the check in the background; only the first call (of Start
// or Lines) starts it.
func (r *Report) Start() {
	r.once.Do(func() { go r.run() })
}

func (r *Report) run() {
	defer close(r.done)
	r.lines = Lines(r.check())
}

// Lines returns the report's lines, starting the check if nobody did and
// waiting for it until ctx ends. However many callers ask, the check runs
// once and its one result is shared (each caller gets its own copy).
func (r *Report) Lines(ctx context.Context) ([]string, error) {
	r.Start()
	// A result already there wins over a context already done.
	select {
	case <-r.done:
		return slices.Clone(r.lines), nil
	default:
	}
	select {
	case <-r.done:
		return slices.Clone(r.lines), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("unable to wait for the running kernel's configuration check: %w", ctx.Err())
	}
}

// Lines formats a check's result: "keel.kernel.missing=<FEATURE>:<OPTION>=<got>"
// for each option the kernel lacks, or "keel.kernel.config=unavailable"
// when its configuration could not be read (no /proc/config.gz).
func Lines(missing []required.Missing, err error) []string {
	if err != nil {
		return []string{"keel.kernel.config=unavailable"}
	}
	out := make([]string, 0, len(missing))
	for _, m := range missing {
		out = append(out, fmt.Sprintf("keel.kernel.missing=%s:%s=%s", m.Feature, m.Option, m.Got))
	}
	return out
}

// Running is required.CheckRunning giving way to other goroutines between
// chunks of the decompressed configuration (a few KiB each).
func Running() ([]required.Missing, error) {
	return checkYielding(required.ConfigGz)
}

func checkYielding(path string) ([]required.Missing, error) {
	return required.CheckGzip(path, func(r io.Reader) io.Reader { return yielding{r} })
}

// yielding lets other goroutines run before each read.
type yielding struct{ r io.Reader }

func (y yielding) Read(p []byte) (int, error) {
	runtime.Gosched()
	return y.r.Read(p)
}
