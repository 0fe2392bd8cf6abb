package oom

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// ParseMemoryEvents returns the oom_kill counter of a cgroup v2
// memory.events file ("low N\nhigh N\nmax N\noom N\noom_kill N\n...").
func ParseMemoryEvents(b []byte) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := bytes.Cut(sc.Bytes(), []byte{' '})
		if !ok || string(k) != "oom_kill" {
			continue
		}
		n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("memory.events: oom_kill %q: %w", v, err)
		}
		return n, nil
	}
	return 0, errors.New("memory.events: no oom_kill line")
}

// v2Group is the one inotify instance that every cgroup v2 watch of a
// Watcher shares, with one goroutine reading it. A watch is then one
// inotify watch on the container's memory.events, added and removed in
// the container's own create and remove: no inotify instance, netpoller
// registration or goroutine per container, and no instance teardown,
// whose fsnotify group destruction waits out an SRCU grace period (in
// the guest, under TCG, that and the set-up were ~9 ms of a lifecycle of
// /bin/true). It also keeps the watcher within fs.inotify.max_user_instances
// (128 by default, for root too), which one instance per container
// exceeded past ~128 live containers.
type v2Group struct {
	mu     sync.Mutex
	ino    *os.File
	fd     int
	byWD   map[int32][]*v2Watch // more than one when cgroups share an inode
	closed bool
}

// v2Watch is one container's watch of memory.events in a v2Group.
type v2Watch struct {
	g      *v2Group
	wd     int32
	path   string
	notify func()
	done   func(watch)
	once   sync.Once
	// mu makes reading the counter, comparing it with last and moving
	// last one step, so that the reader's check and stop's final read
	// queue a kill exactly once between them.
	mu      sync.Mutex
	last    uint64 // the oom_kill count last seen
	stopped bool   // after stop's final read: checks are moot
}

func newV2Group(wg *sync.WaitGroup) (*v2Group, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	g := &v2Group{ino: os.NewFile(uintptr(fd), "oom-inotify"), fd: fd, byWD: map[int32][]*v2Watch{}}
	wg.Add(1)
	go func() {
		defer wg.Done()
		g.read()
	}()
	return g, nil
}

// watch adds dir's memory.events to g. The baseline count is read after
// the inotify watch exists, so no kill falls between, and under g.mu, so
// an event the reader takes meanwhile finds the watch in place.
func (g *v2Group) watch(dir string, notify func(), done func(watch)) (watch, error) {
	path := filepath.Join(dir, "memory.events")
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, ErrClosed
	}
	wd, err := unix.InotifyAddWatch(g.fd, path, unix.IN_MODIFY|unix.IN_DELETE_SELF)
	if err != nil {
		return nil, fmt.Errorf("%w: inotify %s: %v", ErrNoCgroup, path, err)
	}
	// Adding a watch on an inode already watched returns its wd: then
	// the watch is shared and removed with its last user.
	shared := len(g.byWD[int32(wd)]) > 0
	fail := func(err error) (watch, error) {
		if !shared {
			_, _ = unix.InotifyRmWatch(g.fd, uint32(wd))
		}
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fail(fmt.Errorf("%w: %v", ErrNoCgroup, err))
	}
	last, err := ParseMemoryEvents(b)
	if err != nil {
		return fail(err)
	}
	v := &v2Watch{g: g, wd: int32(wd), path: path, notify: notify, done: done, last: last}
	g.byWD[v.wd] = append(g.byWD[v.wd], v)
	return v, nil
}

// stop removes the watch; the inotify watch goes with its last user.
//
// It reads the counter one last time first: the kernel delivers
// memory.events notifications late (at most one per 10 ms per file,
// the rest from a timer, all through a workqueue), and the reader
// goroutine may not have taken one yet, so a kill that ended the
// container right before its remove would otherwise never be queued.
// The caller stops the watch before it removes the cgroup.
func (v *v2Watch) stop() {
	v.once.Do(func() {
		v.mu.Lock()
		if v.grew() {
			v.notify()
		}
		v.stopped = true
		v.mu.Unlock()
		g := v.g
		g.mu.Lock()
		defer g.mu.Unlock()
		list, ok := g.byWD[v.wd]
		if !ok {
			return // the kernel dropped it (IN_IGNORED): nothing to remove
		}
		list = slices.DeleteFunc(list, func(w *v2Watch) bool { return w == v })
		if len(list) > 0 {
			g.byWD[v.wd] = list
			return
		}
		delete(g.byWD, v.wd)
		if !g.closed {
			// Not blocking: the mark is freed by the kernel's
			// fsnotify reaper, asynchronously.
			_, _ = unix.InotifyRmWatch(g.fd, uint32(v.wd))
		}
	})
}

// check re-reads the oom_kill counter and notifies when it grew. A file
// that cannot be read any more (the cgroup went away) ends the watch.
func (v *v2Watch) check() {
	v.mu.Lock()
	if v.stopped {
		v.mu.Unlock()
		return
	}
	b, err := os.ReadFile(v.path)
	if err != nil {
		v.mu.Unlock()
		v.stop()
		v.done(v)
		return
	}
	grew := v.grewTo(b)
	v.mu.Unlock()
	if grew {
		v.notify()
	}
}

// grew reads the counter and reports whether it passed v.last, which it
// then moves to it; v.mu is held. An unreadable file reports false.
func (v *v2Watch) grew() bool {
	b, err := os.ReadFile(v.path)
	return err == nil && v.grewTo(b)
}

func (v *v2Watch) grewTo(memoryEvents []byte) bool {
	cur, err := ParseMemoryEvents(memoryEvents)
	if err != nil || cur <= v.last {
		return false
	}
	v.last = cur
	return true
}

// read runs until g is closed, dispatching inotify events to the watches.
func (g *v2Group) read() {
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := g.ino.Read(buf)
		if err != nil {
			return // closed
		}
		for b := buf[:n]; len(b) >= unix.SizeofInotifyEvent; {
			wd := int32(binary.NativeEndian.Uint32(b[0:]))
			mask := binary.NativeEndian.Uint32(b[4:])
			nameLen := binary.NativeEndian.Uint32(b[12:])
			b = b[min(len(b), unix.SizeofInotifyEvent+int(nameLen)):]
			g.dispatch(wd, mask)
		}
	}
}

func (g *v2Group) dispatch(wd int32, mask uint32) {
	g.mu.Lock()
	var ws []*v2Watch
	switch {
	case mask&unix.IN_Q_OVERFLOW != 0:
		// Events were lost: every counter is re-read.
		for _, list := range g.byWD {
			ws = append(ws, list...)
		}
	case mask&(unix.IN_DELETE_SELF|unix.IN_IGNORED) != 0:
		// The file is gone: the kernel drops the watch itself.
		gone := g.byWD[wd]
		delete(g.byWD, wd)
		g.mu.Unlock()
		for _, v := range gone {
			v.done(v)
		}
		return
	default:
		ws = slices.Clone(g.byWD[wd])
	}
	g.mu.Unlock()
	for _, v := range ws {
		v.check()
	}
}

// close ends the reader; the watches must be stopped first.
func (g *v2Group) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.ino.Close()
}
