// Package timeline records named boot milestones against the guest's
// CLOCK_BOOTTIME, so every entry reads as "time since the kernel started"
// (guest uptime), independent of wall-clock changes such as
// SetGuestDateTime.
//
// The agent marks init_start, mounts_done, modules_loaded, root_switched and
// listener_ready; GetGuestDetails / GetMetrics expose Entries().
package timeline

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Entry is one milestone.
type Entry struct {
	Name  string
	Since time.Duration // since boot (CLOCK_BOOTTIME)
}

// maxEntries bounds the timeline; later marks are dropped.
const maxEntries = 64

var (
	mu      sync.Mutex
	entries []Entry
)

// Now returns the time since boot.
func Now() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	}
	return time.Duration(ts.Nano())
}

// Mark records name at the current time since boot. Marks beyond
// maxEntries are dropped.
func Mark(name string) {
	MarkAt(name, Now())
}

// MarkAt records name at an explicit time since boot (for example a time
// carried across the re-exec after switching root).
func MarkAt(name string, since time.Duration) {
	mu.Lock()
	defer mu.Unlock()
	if len(entries) < maxEntries {
		entries = append(entries, Entry{Name: name, Since: since})
	}
}

// Entries returns a copy of the milestones in the order they were marked.
func Entries() []Entry {
	mu.Lock()
	defer mu.Unlock()
	return append([]Entry(nil), entries...)
}

// Lookup returns the first entry called name.
func Lookup(name string) (Entry, bool) {
	for _, e := range Entries() {
		if e.Name == name {
			return e, true
		}
	}
	return Entry{}, false
}

// String renders the timeline as "name=1.234s" pairs, with the delta from
// the previous entry, e.g. "init_start=0.812s mounts_done=0.830s(+18ms)".
func String() string {
	var b strings.Builder
	var prev time.Duration
	for i, e := range Entries() {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%.3fs", e.Name, e.Since.Seconds())
		if i > 0 {
			fmt.Fprintf(&b, "(+%s)", (e.Since - prev).Round(time.Millisecond))
		}
		prev = e.Since
	}
	return b.String()
}

// Encode renders the timeline as "name:nanoseconds,..." for carrying it
// across an exec in an environment variable; Decode reverses it.
func Encode() string {
	var parts []string
	for _, e := range Entries() {
		parts = append(parts, fmt.Sprintf("%s:%d", e.Name, int64(e.Since)))
	}
	return strings.Join(parts, ",")
}

// Decode restores entries produced by Encode; malformed parts are skipped.
func Decode(s string) {
	for _, p := range strings.Split(s, ",") {
		name, ns, ok := strings.Cut(p, ":")
		var n int64
		if !ok || name == "" {
			continue
		}
		if _, err := fmt.Sscan(ns, &n); err != nil || n < 0 {
			continue
		}
		MarkAt(name, time.Duration(n))
	}
}

// reset is for tests.
func reset() {
	mu.Lock()
	entries = nil
	mu.Unlock()
}
