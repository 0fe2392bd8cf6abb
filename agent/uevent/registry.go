package uevent

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keelvm/keel/agent/errdefs"
)

// Defaults of a Registry.
const (
	// DefaultTimeout is Kata's agent.hotplug_timeout default.
	DefaultTimeout = 3 * time.Second
	// MaxWaiters bounds the calls waiting at once: each holds an RPC, so
	// this is far above what a runtime asks for, and it keeps a flood of
	// requests from growing the agent without bound.
	MaxWaiters = 1024
	// rescanInterval is how often a waiter looks in sysfs again, in case
	// its event was dropped (ENOBUFS) or arrived before it registered.
	rescanInterval = 500 * time.Millisecond
)

// ErrTooManyWaiters is returned by Wait when MaxWaiters calls already wait.
var ErrTooManyWaiters = errdefs.New(errdefs.ErrResourceExhausted, "too many calls waiting for devices")

// Matcher describes an awaited device.
type Matcher struct {
	// What names the device in errors and logs ("block device at PCI
	// path 02/00").
	What string
	// Match reports whether ev is (the event of) the device. It runs on
	// the listener's goroutine with the registry locked: it must be a
	// quick, non-blocking check on the event (no I/O).
	Match func(ev *Event) bool
	// Present, if set, lists the devpaths (relative to sysfs, as DEVPATH)
	// where the device would be if it is already there; each is read back
	// with FromSysfs and offered to Match. It may do I/O: it runs on the
	// waiting goroutine, with nothing locked.
	Present func(sysfs string) []string
}

// Registry dispatches uevents to the calls waiting for them.
type Registry struct {
	sysfs   string
	devDir  string // where block nodes are opened to check them (devReady)
	timeout time.Duration

	mu      sync.Mutex
	waiters map[*waiter]struct{}
	probing map[string]chan struct{} // node -> closed when its open returns (devReady)
	open    func(node string) error  // devReady's open and close; tests replace it
}

type waiter struct {
	match func(*Event) bool
	got   chan Event    // buffered 1: the matching event
	lost  chan struct{} // buffered 1: events were dropped, look in sysfs
}

// NewRegistry returns a Registry that looks for present devices under the
// sysfs mount point sysfs ("" = /sys) and waits timeout when a Wait
// passes none (0 = DefaultTimeout).
func NewRegistry(sysfs string, timeout time.Duration) *Registry {
	if sysfs == "" {
		sysfs = DefaultSysfs
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	r := &Registry{sysfs: sysfs, timeout: timeout, waiters: make(map[*waiter]struct{}), probing: make(map[string]chan struct{}), open: openClose}
	if sysfs == DefaultSysfs {
		r.devDir = "/dev" // a test's fake sysfs has no disks of its own to open
	}
	return r
}

// Sysfs is the sysfs mount point the registry looks in.
func (r *Registry) Sysfs() string { return r.sysfs }

// Timeout is the default deadline of Wait (agent.hotplug_timeout).
func (r *Registry) Timeout() time.Duration { return r.timeout }

// Deliver hands one event to the waiters it matches. The Listener calls
// it; tests may too.
func (r *Registry) Deliver(ev Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for w := range r.waiters {
		if w.match(&ev) {
			select {
			case w.got <- ev:
			default: // already has one
			}
		}
	}
}

// Lost tells every waiter that events were dropped: they look in sysfs
// again at once instead of at their next rescan.
func (r *Registry) Lost() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for w := range r.waiters {
		select {
		case w.lost <- struct{}{}:
		default:
		}
	}
}

// Waiting is the number of calls waiting now.
func (r *Registry) Waiting() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.waiters)
}

// Wait returns the event of the device m describes: at once if sysfs
// already has it, else when its uevent arrives. It gives up after timeout
// (0 = the registry's default) with an error wrapping
// context.DeadlineExceeded, or when ctx ends with ctx's error.
func (r *Registry) Wait(ctx context.Context, m Matcher, timeout time.Duration) (Event, error) {
	if m.Match == nil {
		return Event{}, fmt.Errorf("matcher for %s has no Match", m.What)
	}
	if timeout <= 0 {
		timeout = r.timeout
	}
	// Register before looking in sysfs: a device that shows up between
	// the look and the registration would otherwise be missed.
	w := &waiter{match: m.Match, got: make(chan Event, 1), lost: make(chan struct{}, 1)}
	r.mu.Lock()
	if len(r.waiters) >= MaxWaiters {
		r.mu.Unlock()
		return Event{}, fmt.Errorf("unable to wait for %s: %w", m.What, ErrTooManyWaiters)
	}
	r.waiters[w] = struct{}{}
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.waiters, w)
		r.mu.Unlock()
	}()

	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	rescan := time.NewTicker(rescanInterval)
	defer rescan.Stop()
	for {
		if ev, ok := r.present(m); ok {
			return ev, nil
		}
		select {
		case ev := <-w.got:
			return ev, nil
		case <-w.lost:
		case <-rescan.C:
		case <-deadline.C:
			// One last look: the device may have come with a lost event.
			if ev, ok := r.present(m); ok {
				return ev, nil
			}
			return Event{}, fmt.Errorf("%s did not appear within %s: %w", m.What, timeout, context.DeadlineExceeded)
		case <-ctx.Done():
			return Event{}, fmt.Errorf("waiting for %s: %w", m.What, ctx.Err())
		}
	}
}

// present looks in sysfs for the device. A device found there may still
// be in the middle of being added (see devReady): one that is not ready
// is left for its uevent or the next rescan.
func (r *Registry) present(m Matcher) (Event, bool) {
	if m.Present == nil {
		return Event{}, false
	}
	for _, dp := range m.Present(r.sysfs) {
		ev, err := FromSysfs(r.sysfs, dp)
		if err != nil {
			continue // went away, or not a device
		}
		if m.Match(&ev) && r.devReady(&ev) {
			return ev, true
		}
	}
	return Event{}, false
}

// openClose opens node read-only and closes it again.
func openClose(node string) error {
	fd, err := unix.Open(node, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err == nil {
		unix.Close(fd)
	}
	return err
}

// probeWait bounds how long a sysfs scan waits for one open in devReady.
const probeWait = 100 * time.Millisecond

// devReady reports whether a disk found in sysfs can be opened yet. The
// kernel adds a disk in steps (block/genhd.c device_add_disk): its sysfs
// directory and /dev node appear first (device_add, with its uevent held
// back), and only after bdev_add and the partition scan is the disk
// announced; opening it before bdev_add answers ENXIO. A sysfs scan can
// land in that window (a hot-plugged disk while an RPC waits for it: the
// cause of the "open /dev/vda: no such device or address" flake), so a
// disk that answers ENXIO is not there yet. Its uevent, sent after
// bdev_add, needs no check. Anything else (no node, EACCES, ENOMEDIUM)
// counts as ready and is the caller's to report.
//
// An open can block (a SCSI disk whose host is in error recovery waits
// uninterruptibly), so it runs on its own goroutine, at most one per node
// across all waiters; a scan waits for it at most probeWait and counts a
// disk whose open has not returned as not there yet.
func (r *Registry) devReady(ev *Event) bool {
	if ev.Subsystem != "block" || ev.DevName == "" || r.devDir == "" || strings.Contains(ev.DevName, "..") {
		return true
	}
	node := filepath.Join(r.devDir, ev.DevName)
	r.mu.Lock()
	done, busy := r.probing[node]
	if !busy {
		done = make(chan struct{})
		r.probing[node] = done
	}
	r.mu.Unlock()
	if busy {
		return false // an earlier open of it has not returned
	}
	var err error
	go func() {
		defer close(done)
		err = r.open(node)
		r.mu.Lock()
		delete(r.probing, node)
		r.mu.Unlock()
	}()
	t := time.NewTimer(probeWait)
	defer t.Stop()
	select {
	case <-done:
		return err != unix.ENXIO
	case <-t.C:
		return false
	}
}
