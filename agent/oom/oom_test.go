package oom

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"golang.org/x/sys/unix"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/keelvm/keel/protocol/grpc"
)

// TestMain doubles as the memory hog the v1 test puts in a cgroup.
func TestMain(m *testing.M) {
	if os.Getenv("KEEL_OOM_HOG") == "1" {
		io.ReadFull(os.Stdin, make([]byte, 1)) // wait until moved into the cgroup
		var keep [][]byte
		for i := 0; i < 1024; i++ {
			b := make([]byte, 1<<20)
			for j := range b {
				b[j] = byte(j)
			}
			keep = append(keep, b)
		}
		fmt.Println(len(keep))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func expectNone(t *testing.T, w *Watcher) {
	t.Helper()
	if id, err := w.Next(ctxT(t, 200*time.Millisecond)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unexpected event %q, %v", id, err)
	}
}

func waitUnwatched(t *testing.T, w *Watcher, id string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for w.Watching(id) {
		if time.Now().After(deadline) {
			t.Fatalf("watch of %s did not end with its cgroup", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestV1RealOOMKill(t *testing.T) {
	base := "/sys/fs/cgroup/memory"
	if _, err := os.Stat(base + "/memory.oom_control"); err != nil || os.Geteuid() != 0 {
		t.Skip("needs root and the cgroup v1 memory controller")
	}
	dir := filepath.Join(base, fmt.Sprintf("keel-oom-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(dir) })
	write := func(name, v string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	write("memory.limit_in_bytes", "16M")
	if _, err := os.Stat(filepath.Join(dir, "memory.memsw.limit_in_bytes")); err == nil {
		write("memory.memsw.limit_in_bytes", "16M") // no escape into swap
	}

	w := New()
	defer w.Close()
	if err := w.Watch("c1", dir, false); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "KEEL_OOM_HOG=1")
	stdin, _ := cmd.StdinPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	write("cgroup.procs", strconv.Itoa(cmd.Process.Pid))
	stdin.Write([]byte{1})
	err := cmd.Wait()
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL || 128+int(ws.Signal()) != 137 {
		t.Fatalf("hog ended with %v (%v), want SIGKILL (137)", err, ws)
	}
	id, err := w.Next(ctxT(t, 10*time.Second))
	if err != nil || id != "c1" {
		t.Fatalf("event %q, %v", id, err)
	}
	expectNone(t, w) // one kill, one event
	// Removing the cgroup ends the watch without a spurious event.
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	waitUnwatched(t, w, "c1")
	expectNone(t, w)
}

func TestV2Watch(t *testing.T) {
	dir := t.TempDir()
	events := filepath.Join(dir, "memory.events")
	put := func(oom, kill, low int) {
		s := fmt.Sprintf("low %d\nhigh 0\nmax 3\noom %d\noom_kill %d\noom_group_kill 0\n", low, oom, kill)
		if err := os.WriteFile(events, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	put(2, 2, 0) // kills before the watch started are not reported
	w := New()
	defer w.Close()
	if err := w.Watch("c2", dir, true); err != nil {
		t.Fatal(err)
	}
	put(2, 2, 5) // other counters changed
	expectNone(t, w)
	put(3, 3, 5)
	if id, err := w.Next(ctxT(t, 5*time.Second)); err != nil || id != "c2" {
		t.Fatalf("event %q, %v", id, err)
	}
	os.Remove(events)
	waitUnwatched(t, w, "c2")
	expectNone(t, w)
}

func TestParseMemoryEvents(t *testing.T) {
	for in, want := range map[string]uint64{
		"low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n": 0,
		"oom 7\noom_kill 5\noom_group_kill 1\n":     5,
		"oom_kill 18446744073709551615":             1<<64 - 1,
	} {
		if got, err := ParseMemoryEvents([]byte(in)); err != nil || got != want {
			t.Errorf("%q: %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "oom 1\n", "oom_kill x\n", "oom_kill -1\n", "oom_kill 18446744073709551616\n"} {
		if _, err := ParseMemoryEvents([]byte(in)); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func TestWatchErrors(t *testing.T) {
	w := New()
	defer w.Close()
	if err := w.Watch("", t.TempDir(), true); err == nil {
		t.Fatal("empty ID accepted")
	}
	for _, v2 := range []bool{false, true} {
		if err := w.Watch("x", "/nonexistent/cgroup", v2); !errors.Is(err, ErrNoCgroup) {
			t.Fatalf("v2=%v missing cgroup: %v", v2, err)
		}
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "memory.events"), []byte("oom_kill 0\n"), 0o644)
	if err := w.Watch("a", dir, true); err != nil {
		t.Fatal(err)
	}
	if err := w.Watch("a", dir, true); !errors.Is(err, ErrWatched) {
		t.Fatalf("duplicate: %v", err)
	}
	w.Unwatch("a")
	w.Unwatch("a") // twice is fine
	if err := w.Watch("a", dir, true); err != nil {
		t.Fatalf("re-watch after Unwatch: %v", err)
	}
}

func TestQueueLimitAndCoalescing(t *testing.T) {
	w := New()
	defer w.Close()
	w.push("a")
	w.push("a") // coalesced
	w.push("b")
	w.push("a")
	for _, want := range []string{"a", "b", "a"} {
		if id, _ := w.Next(ctxT(t, time.Second)); id != want {
			t.Fatalf("got %q want %q", id, want)
		}
	}
	for i := 0; i < MaxQueued+10; i++ {
		w.push(strconv.Itoa(i))
	}
	if w.Dropped() != 10 {
		t.Fatalf("dropped %d, want 10", w.Dropped())
	}
	if id, _ := w.Next(ctxT(t, time.Second)); id != "10" {
		t.Fatalf("oldest kept is %q, want 10", id)
	}
}

func TestGetOOMEventHandler(t *testing.T) {
	w := New()
	go func() {
		time.Sleep(50 * time.Millisecond)
		w.push("late")
	}()
	ev, err := w.GetOOMEvent(ctxT(t, 5*time.Second), &pb.GetOOMEventRequest{})
	if err != nil || ev.ContainerId != "late" {
		t.Fatalf("%v, %v", ev, err)
	}
	if _, err := w.GetOOMEvent(ctxT(t, 50*time.Millisecond), nil); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("timeout: %v", err)
	}
	done := make(chan error)
	go func() {
		_, err := w.GetOOMEvent(context.Background(), nil)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	w.Close()
	select {
	case err := <-done:
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake the long poll")
	}
	if err := w.Watch("x", t.TempDir(), true); !errors.Is(err, ErrClosed) {
		t.Fatalf("Watch after Close: %v", err)
	}
}

func TestCloseReleasesFds(t *testing.T) {
	count := func() int { e, _ := os.ReadDir("/proc/self/fd"); return len(e) }
	base := count()
	w := New()
	for i := 0; i < 5; i++ {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "memory.events"), []byte("oom_kill 0\n"), 0o644)
		if err := w.Watch(strconv.Itoa(i), dir, true); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	if n := count(); n > base {
		t.Fatalf("%d fds open after Close, baseline %d", n, base)
	}
}

func TestWatchPathsPicksController(t *testing.T) {
	w := New()
	defer w.Close()
	v2dir := t.TempDir()
	os.WriteFile(filepath.Join(v2dir, "memory.events"), []byte("oom_kill 0\n"), 0o644)
	if err := w.WatchPaths("u", map[string]string{"": v2dir, "pids": "/x"}); err != nil {
		t.Fatalf("unified: %v", err)
	}
	// A v1 "memory" entry wins over "" (hybrid hosts list both); this one
	// has no memory.oom_control, which proves the v1 watcher was chosen.
	if err := w.WatchPaths("m", map[string]string{"memory": v2dir, "": v2dir}); !errors.Is(err, ErrNoCgroup) || !strings.Contains(err.Error(), "memory.oom_control") {
		t.Fatalf("v1 preference: %v", err)
	}
	if err := w.WatchPaths("none", map[string]string{"cpu": "/x"}); !errors.Is(err, ErrNoCgroup) {
		t.Fatalf("no memory path: %v", err)
	}
}

// putKills writes a v2 memory.events with oom_kill n in dir.
func putKills(t *testing.T, dir string, n int) {
	t.Helper()
	s := fmt.Sprintf("low 0\nhigh 0\nmax 0\noom %d\noom_kill %d\noom_group_kill 0\n", n, n)
	if err := os.WriteFile(filepath.Join(dir, "memory.events"), []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// inotifyInstances counts this process's inotify descriptors.
func inotifyInstances(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if l, _ := os.Readlink("/proc/self/fd/" + fd.Name()); l == "anon_inode:inotify" {
			n++
		}
	}
	return n
}

// More live v2 watches than fs.inotify.max_user_instances allows
// instances (128 by default) all work, on one inotify instance, and each
// event names its own container, also after others were unwatched.
//
// n is capped at 1100: on a host tuned to thousands of instances, limit
// + 72 watches could exceed fs.inotify.max_user_watches, which every root
// process shares (8192 on small hosts). One instance is asserted directly.
func TestV2WatchesShareOneInstance(t *testing.T) {
	n := 200
	if b, err := os.ReadFile("/proc/sys/fs/inotify/max_user_instances"); err == nil {
		if max, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			n = min(max+72, 1100)
		}
	}
	before := inotifyInstances(t)
	w := New()
	defer w.Close()
	root := t.TempDir()
	dirs := make([]string, n)
	for i := range dirs {
		dirs[i] = filepath.Join(root, strconv.Itoa(i))
		if err := os.Mkdir(dirs[i], 0o755); err != nil {
			t.Fatal(err)
		}
		putKills(t, dirs[i], 1)
		if err := w.Watch("c"+strconv.Itoa(i), dirs[i], true); err != nil {
			t.Fatalf("watch %d of %d: %v", i, n, err)
		}
	}
	if got := inotifyInstances(t) - before; got != 1 {
		t.Fatalf("%d watches hold %d inotify instances, want 1", n, got)
	}
	for _, i := range []int{n - 1, 0, n / 2} {
		putKills(t, dirs[i], 2)
		if id, err := w.Next(ctxT(t, 5*time.Second)); err != nil || id != "c"+strconv.Itoa(i) {
			t.Fatalf("kill in %d: event %q, %v", i, id, err)
		}
	}
	expectNone(t, w)
	// An unwatched container reports nothing; its neighbours still do.
	w.Unwatch("c1")
	putKills(t, dirs[1], 5)
	expectNone(t, w)
	putKills(t, dirs[2], 5)
	if id, err := w.Next(ctxT(t, 5*time.Second)); err != nil || id != "c2" {
		t.Fatalf("kill in 2 after unwatching 1: event %q, %v", id, err)
	}
	// Re-watching takes the current count as its baseline.
	if err := w.Watch("c1", dirs[1], true); err != nil {
		t.Fatal(err)
	}
	expectNone(t, w)
	putKills(t, dirs[1], 6)
	if id, err := w.Next(ctxT(t, 5*time.Second)); err != nil || id != "c1" {
		t.Fatalf("kill in re-watched 1: event %q, %v", id, err)
	}
}

// Two containers watching the same memory.events (one inotify watch in the
// kernel) both get its events, and removing one keeps the other's.
func TestV2SharedCgroupWatch(t *testing.T) {
	dir := t.TempDir()
	putKills(t, dir, 0)
	w := New()
	defer w.Close()
	for _, id := range []string{"a", "b"} {
		if err := w.Watch(id, dir, true); err != nil {
			t.Fatal(err)
		}
	}
	putKills(t, dir, 1)
	got := map[string]bool{}
	for range 2 {
		id, err := w.Next(ctxT(t, 5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got[id] = true
	}
	if !got["a"] || !got["b"] {
		t.Fatalf("events for %v, want a and b", got)
	}
	w.Unwatch("a")
	putKills(t, dir, 2)
	if id, err := w.Next(ctxT(t, 5*time.Second)); err != nil || id != "b" {
		t.Fatalf("after unwatching a: event %q, %v", id, err)
	}
	expectNone(t, w)
	os.Remove(filepath.Join(dir, "memory.events"))
	waitUnwatched(t, w, "b")
}

// bumpKillsSilently raises oom_kill in dir's memory.events from n to n+1
// through a shared mapping, which inotify does not report: the state of
// a kernel that counted a kill but has not delivered its notification
// yet (memory.events notifications are rate-limited to one per 10 ms and
// sent from a workqueue).
func bumpKillsSilently(t *testing.T, dir string, n int) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, "memory.events"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	from, to := fmt.Sprintf("oom_kill %d\n", n), fmt.Sprintf("oom_kill %d\n", n+1)
	i := bytes.Index(m, []byte(from))
	if i < 0 || len(from) != len(to) {
		t.Fatalf("memory.events %q: cannot bump %q in place", m, from)
	}
	copy(m[i:], to)
}

// A kill counted right before the container's remove reaches GetOOMEvent
// although its notification had not arrived when the watch stopped; a
// notification the reader takes after that does not queue it again.
func TestV2KillRightBeforeUnwatch(t *testing.T) {
	dir := t.TempDir()
	putKills(t, dir, 1)
	w := New()
	defer w.Close()
	if err := w.Watch("c", dir, true); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	wt := w.watches["c"].(*v2Watch)
	w.mu.Unlock()
	bumpKillsSilently(t, dir, 1)
	w.Unwatch("c")
	if id, err := w.Next(ctxT(t, 5*time.Second)); err != nil || id != "c" {
		t.Fatalf("kill right before Unwatch: event %q, %v", id, err)
	}
	wt.check() // the late notification, taken after the stop
	expectNone(t, w)
}

// The same on cgroup v1: a signal of the OOM eventfd that the watch's
// goroutine has not read when the watch stops is still reported.
func TestV1SignalRightBeforeStop(t *testing.T) {
	base := "/sys/fs/cgroup/memory"
	if _, err := os.Stat(base + "/memory.oom_control"); err != nil || os.Geteuid() != 0 {
		t.Skip("needs root and the cgroup v1 memory controller")
	}
	dir := filepath.Join(base, fmt.Sprintf("keel-oom-stop-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(dir) })
	// The goroutine takes the first signal and is held in its notify,
	// so the second is still pending in the eventfd at the stop.
	var (
		notified = make(chan struct{}, 2)
		release  = make(chan struct{})
		count    atomic.Int32
	)
	notify := func() {
		notified <- struct{}{}
		if count.Add(1) == 1 {
			<-release
		}
	}
	var wg sync.WaitGroup
	wt, err := watchV1(dir, notify, func(watch) {}, &wg)
	if err != nil {
		t.Fatal(err)
	}
	v := wt.(*v1Watch)
	signal := func() {
		if _, err := unix.Write(int(v.efd.Fd()), binary.NativeEndian.AppendUint64(nil, 1)); err != nil {
			t.Fatal(err)
		}
	}
	signal()
	select {
	case <-notified:
	case <-time.After(5 * time.Second):
		t.Fatal("the first signal was not reported")
	}
	signal()
	stopped := make(chan struct{})
	go func() { v.stop(); close(stopped) }()
	select {
	case <-notified:
	case <-stopped:
	case <-time.After(5 * time.Second):
	}
	close(release)
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("stop did not return within 10s")
	}
	waited := make(chan struct{})
	go func() { wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("the watch's goroutine did not end within 10s of stop")
	}
	if n := count.Load(); n != 2 {
		t.Fatalf("%d events for 2 signals", n)
	}
}
