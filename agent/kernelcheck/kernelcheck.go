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
// so the check gives way to them: its thread runs at SCHED_IDLE and its
// scan yields to other goroutines between chunks, so it uses the time the
// guest waits for the host. Once a caller waits for it, the thread gets a
// normal share again: a guest kept busy by its containers cannot starve it.
package kernelcheck

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sync"

	"golang.org/x/sys/unix"

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

	mu      sync.Mutex
	tid     int  // the check's thread while it runs at SCHED_IDLE, else 0
	boosted bool // a caller waited: the check runs at the normal policy
}

// New returns a report of check, not started yet.
func New(check Check) *Report {
	return &Report{check: check, done: make(chan struct{})}
}

// Start runs the check in the background, at idle priority; only the
// first call (of Start or Lines) starts it.
func (r *Report) Start() {
	r.once.Do(func() { go r.run() })
}

func (r *Report) run() {
	defer close(r.done)
	// Never unlocked: the thread's policy is changed, so the thread must
	// end with this goroutine rather than serve others.
	runtime.LockOSThread()
	r.mu.Lock()
	if !r.boosted && setPolicy(0, unix.SCHED_IDLE) == nil {
		r.tid = unix.Gettid()
	}
	r.mu.Unlock()
	lines := Lines(r.check())
	r.mu.Lock()
	r.tid = 0 // boost must not touch the thread once it may have ended
	r.mu.Unlock()
	r.lines = lines
}

// boost gives the check's thread the normal policy back: somebody waits.
func (r *Report) boost() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.boosted = true
	if r.tid != 0 {
		// An unprivileged agent may not leave SCHED_IDLE (RLIMIT_NICE):
		// the check then finishes at idle priority.
		_ = setPolicy(r.tid, unix.SCHED_NORMAL)
		r.tid = 0
	}
}

func setPolicy(tid int, policy uint32) error {
	return unix.SchedSetAttr(tid, &unix.SchedAttr{Policy: policy}, 0)
}

// Lines returns the report's lines, starting the check if nobody did and
// waiting for it until ctx ends. However many callers ask, the check runs
// once and its one result is shared (each caller gets its own copy).
func (r *Report) Lines(ctx context.Context) ([]string, error) {
	r.Start()
	select {
	case <-r.done:
		return slices.Clone(r.lines), nil
	default:
	}
	r.boost()
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
	return checkGzip(required.ConfigGz)
}

func checkGzip(path string) ([]required.Missing, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, required.ErrNotAvailable
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	m, err := required.CheckConfig(yielding{zr})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// yielding lets other goroutines run before each read.
type yielding struct{ r io.Reader }

func (y yielding) Read(p []byte) (int, error) {
	runtime.Gosched()
	return y.r.Read(p)
}
