package storage

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/uevent"
	"golang.org/x/sys/unix"
)

// lockedBuffer is a log sink the watcher's goroutine and the test share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// underneath returns the names in dir as they are on its own file system,
// below any mount on dir: dir's parent (the watchable tmpfs) is bound,
// without its submounts, to a scratch directory and dir read there.
func underneath(t *testing.T, dir string) []string {
	t.Helper()
	peek := t.TempDir()
	must(t, unix.Mount(filepath.Dir(dir), peek, "", unix.MS_BIND, ""))
	defer unix.Unmount(peek, unix.MNT_DETACH)
	ents, err := os.ReadDir(filepath.Join(peek, filepath.Base(dir)))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestWatchableCountsDirectories: directories count toward watchable-bind's
// entry limit, as in Kata's watcher (the source itself and every entry
// below it: 16 at most). A source at the limit is mirrored; one more empty
// directory planted in it and the next poll replaces the copy by a bind
// mount, with the copy removed from under it, and the log says why. A
// source where a workload planted 20,000 empty directories is bind-mounted
// at once, its listing cut short at the limit. (Before, directories were
// not counted: both were mirrored, the 20,000 directories on every poll.)
func TestWatchableCountsDirectories(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("storages are mounted: needs root")
	}
	root := t.TempDir()
	var logged lockedBuffer
	m := New(Config{Roots: []string{root}, ContainerBase: filepath.Join(root, "containers"),
		Devices: uevent.NewRegistry("", 500*time.Millisecond), WatchInterval: 50 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(&logged, nil))})
	t.Cleanup(func() {
		m.Close()
		assertNoMountsUnder(t, root)
	})
	ctx := context.Background()

	// At the limit: the source and 15 directories (one nested) are 16
	// entries, mirrored.
	src := shareDir(t, root, "dirs")
	for i := range WatchMaxEntries - 2 {
		must(t, os.Mkdir(filepath.Join(src, fmt.Sprintf("d%02d", i)), 0o755))
	}
	must(t, os.Mkdir(filepath.Join(src, "d00", "nested"), 0o755))
	mp := filepath.Join(root, "shared/containers/watchable/dirs")
	must(t, m.Add(ctx, "c1", "storages", []Storage{{Driver: DriverWatchableBind, Source: src, MountPoint: mp}}))
	if isMountPoint(mp) {
		t.Fatal("a source of exactly 16 entries was bind-mounted, not mirrored")
	}
	if _, err := os.Stat(filepath.Join(mp, "d00", "nested")); err != nil {
		t.Fatalf("16 entries not mirrored: %v", err)
	}
	// One more directory: over the limit at the next poll.
	must(t, os.Mkdir(filepath.Join(src, "d00", "nested", "one-more"), 0o755))
	deadline := time.Now().Add(10 * time.Second)
	for !isMountPoint(mp) {
		if time.Now().After(deadline) {
			t.Fatal("a source of 17 entries (directories) still mirrored 10 s later")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(mp, "d00", "nested", "one-more")); err != nil {
		t.Fatalf("the bind mount does not show the source: %v", err)
	}
	if left := underneath(t, mp); len(left) != 0 {
		t.Fatalf("the copy left under the bind mount: %v", left)
	}
	if l := logged.String(); !strings.Contains(l, "bind-mounted") || !strings.Contains(l, "more than 16 entries") || !strings.Contains(l, src) {
		t.Fatalf("the switch to a bind mount is not logged with its reason:\n%s", l)
	}

	// A hostile source: 20,000 empty directories.
	planted := shareDir(t, root, "planted")
	for i := range 20000 {
		must(t, os.Mkdir(filepath.Join(planted, fmt.Sprintf("p%05d", i)), 0o755))
	}
	mp2 := filepath.Join(root, "shared/containers/watchable/planted")
	t0 := time.Now()
	must(t, m.Add(ctx, "c2", "storages", []Storage{{Driver: DriverWatchableBind, Source: planted, MountPoint: mp2}}))
	if !isMountPoint(mp2) {
		t.Fatal("a source of 20,000 directories was mirrored, not bind-mounted")
	}
	t.Logf("20,000 planted directories: bind-mounted in %v", time.Since(t0))
	if left := underneath(t, mp2); len(left) != 0 {
		t.Fatalf("a half copy left under the bind mount: %d entries", len(left))
	}
	must(t, m.Release("c1"))
	must(t, m.Release("c2"))
	if ms := mountsUnder(root); len(ms) != 0 {
		t.Fatalf("left after Release: %v", ms)
	}
}

// TestReadDirNamesAtMost: a listing stops at n+1 names.
func TestReadDirNamesAtMost(t *testing.T) {
	dir := t.TempDir()
	for i := range 40 {
		must(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%02d", i)), nil, 0o644))
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for _, c := range []struct {
		n    int
		more bool
	}{{0, true}, {16, true}, {39, true}, {40, false}, {100, false}} {
		names, more, err := readDirNamesAtMost(fd, c.n)
		if err != nil || more != c.more || (!more && (len(names) != 40 || names[0] != "f00" || names[39] != "f39")) {
			t.Errorf("n=%d: %d names, more %v, %v; want more %v", c.n, len(names), more, err, c.more)
		}
	}
}
