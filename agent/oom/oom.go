// Package oom feeds Kata's GetOOMEvent long poll: it watches the memory
// cgroup of each container and queues the container's ID whenever the
// kernel OOM-kills a task in it (Kata runtime#2150, #2955, kata#8821: OOM
// kills that never reached the host).
//
//   - cgroup v1: an eventfd registered through cgroup.event_control on
//     memory.oom_control; the kernel signals it on every OOM in the cgroup
//     (and once more when the cgroup is removed, which ends the watch).
//   - cgroup v2: inotify on memory.events; the "oom_kill" counter is re-read
//     on each modification and an event is queued when it grew. All v2
//     watches share one inotify instance (see v2Group).
//
// The queue is bounded (MaxQueued) and never holds the same container twice
// in a row: the host needs to learn that a container OOMed, not how often
// it did between two polls.
package oom

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/keelvm/keel/agent/errdefs"
)

// MaxQueued bounds events waiting for GetOOMEvent; at the limit the oldest
// is dropped (a host that stopped polling must not grow the agent).
const MaxQueued = 1024

// Errors.
var (
	ErrClosed   = errdefs.New(errdefs.ErrUnavailable, "oom watcher closed")
	ErrWatched  = errors.New("container already watched")
	ErrNoCgroup = errors.New("memory cgroup not found")
)

// Watcher watches containers' memory cgroups and queues OOM events.
type Watcher struct {
	mu      sync.Mutex
	watches map[string]watch
	queue   []string
	wake    chan struct{} // closed and replaced when queue gains an entry
	closed  bool
	dropped uint64
	v2      *v2Group // made by the first v2 watch
	wg      sync.WaitGroup
}

// watch is one running cgroup watch; stop ends it and releases its fds.
type watch interface{ stop() }

// New returns an empty Watcher.
func New() *Watcher {
	return &Watcher{watches: map[string]watch{}, wake: make(chan struct{})}
}

// Watch starts watching the memory cgroup directory cgroupPath (the full
// path, e.g. /sys/fs/cgroup/memory/kata/<id> on v1 or /sys/fs/cgroup/<path>
// on v2) for containerID. The watch ends by itself when the cgroup goes
// away.
func (w *Watcher) Watch(containerID, cgroupPath string, v2 bool) error {
	if containerID == "" {
		return errors.New("oom watch: empty container ID")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrClosed
	}
	if _, ok := w.watches[containerID]; ok {
		return fmt.Errorf("oom watch %s: %w", containerID, ErrWatched)
	}
	notify := func() { w.push(containerID) }
	done := func(wt watch) { w.forget(containerID, wt) }
	var (
		wt  watch
		err error
	)
	if v2 {
		if w.v2 == nil {
			if w.v2, err = newV2Group(&w.wg); err != nil {
				return fmt.Errorf("oom watch %s: %w", containerID, err)
			}
		}
		wt, err = w.v2.watch(cgroupPath, notify, done)
	} else {
		wt, err = watchV1(cgroupPath, notify, done, &w.wg)
	}
	if err != nil {
		return fmt.Errorf("oom watch %s: %w", containerID, err)
	}
	w.watches[containerID] = wt
	return nil
}

// WatchPaths starts a watch from libcontainer's cgroup path map
// ((*libcontainer.Container).State().CgroupPaths, or a cgroup manager's
// GetPaths()): the v1 "memory" entry when present, else the v2 unified ""
// entry.
func (w *Watcher) WatchPaths(containerID string, paths map[string]string) error {
	if p := paths["memory"]; p != "" {
		return w.Watch(containerID, p, false)
	}
	if p := paths[""]; p != "" {
		return w.Watch(containerID, p, true)
	}
	return fmt.Errorf("oom watch %s: %w: no memory or unified entry among %d cgroup paths", containerID, ErrNoCgroup, len(paths))
}

// Unwatch stops watching containerID; events already queued stay queued.
// It reads the cgroup's OOM state one last time, so a kill whose
// notification has not arrived yet is still queued: call it before the
// cgroup is removed.
func (w *Watcher) Unwatch(containerID string) {
	w.mu.Lock()
	wt, ok := w.watches[containerID]
	delete(w.watches, containerID)
	w.mu.Unlock()
	if ok {
		wt.stop()
	}
}

// forget drops a watch that ended by itself, unless it was replaced.
func (w *Watcher) forget(containerID string, wt watch) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.watches[containerID] == wt {
		delete(w.watches, containerID)
	}
}

// Watching reports whether containerID has a live watch.
func (w *Watcher) Watching(containerID string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.watches[containerID]
	return ok
}

func (w *Watcher) push(containerID string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	if n := len(w.queue); n > 0 && w.queue[n-1] == containerID {
		return // coalesce: the host has not seen the previous one yet
	}
	if len(w.queue) >= MaxQueued {
		w.queue = w.queue[1:]
		w.dropped++
	}
	w.queue = append(w.queue, containerID)
	close(w.wake)
	w.wake = make(chan struct{})
}

// Next blocks until an OOM event is queued and returns its container ID,
// or returns ctx's error or ErrClosed.
func (w *Watcher) Next(ctx context.Context) (string, error) {
	for {
		w.mu.Lock()
		if len(w.queue) > 0 {
			id := w.queue[0]
			w.queue = w.queue[1:]
			w.mu.Unlock()
			return id, nil
		}
		if w.closed {
			w.mu.Unlock()
			return "", ErrClosed
		}
		wake := w.wake
		w.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// Dropped reports how many events were discarded at MaxQueued.
func (w *Watcher) Dropped() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.dropped
}

// Close stops every watch, wakes waiting Next calls with ErrClosed and
// waits for the watch goroutines to end.
func (w *Watcher) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	ws, v2 := w.watches, w.v2
	w.watches = map[string]watch{}
	close(w.wake)
	w.wake = make(chan struct{})
	w.mu.Unlock()
	for _, wt := range ws {
		wt.stop()
	}
	if v2 != nil {
		v2.close()
	}
	w.wg.Wait()
	return nil
}
