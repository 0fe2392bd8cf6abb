package storage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestWatchableSourceSwappedMidWalk: a directory inside a watched source
// is swapped, over and over, with a symlink to a directory outside the
// source (renameat2 RENAME_EXCHANGE, as a container writing the share can)
// while the source is mirrored: nothing from outside the source ever lands
// in the copy, with openat2 and with the per-component openat fallback.
// (Before, only the last component of a copied file was opened
// O_NOFOLLOW: a directory swapped between the walk and the copy was
// followed.)
func TestWatchableSourceSwappedMidWalk(t *testing.T) {
	for _, fallback := range []bool{false, true} {
		name := "openat2"
		if fallback {
			name = "openat-fallback"
		}
		t.Run(name, func(t *testing.T) {
			if fallback {
				noOpenat2.Store(true)
				t.Cleanup(func() { noOpenat2.Store(false) })
			}
			root := t.TempDir()
			src := filepath.Join(root, "src")
			must(t, os.MkdirAll(filepath.Join(src, "sub"), 0o755))
			must(t, os.WriteFile(filepath.Join(src, "sub/key"), []byte("inside"), 0o644))
			must(t, os.WriteFile(filepath.Join(src, "top"), []byte("top"), 0o644))
			outside := filepath.Join(root, "outside")
			must(t, os.MkdirAll(outside, 0o755))
			must(t, os.WriteFile(filepath.Join(outside, "key"), []byte("SECRET"), 0o644))
			link := filepath.Join(root, "link")
			must(t, os.Symlink(outside, link))
			dst := filepath.Join(root, "dst")
			must(t, os.Mkdir(dst, 0o755))

			exchangeLoop(t, filepath.Join(src, "sub"), link)

			leaked := func() string {
				var found string
				filepath.Walk(dst, func(p string, fi fs.FileInfo, err error) error {
					if err == nil && fi.Mode().IsRegular() {
						if b, _ := os.ReadFile(p); strings.Contains(string(b), "SECRET") {
							found = p
						}
					}
					return nil
				})
				return found
			}
			copied, failed := 0, 0
			deadline := time.Now().Add(3 * time.Second)
			for time.Now().Before(deadline) {
				e := &watched{src: src, dst: dst, seen: map[string]time.Time{}}
				if err := mirror(e); err != nil {
					failed++
				} else {
					copied++
				}
				if p := leaked(); p != "" {
					t.Fatalf("after %d mirrors: %s holds the content of %s, outside the source", copied+failed, p, outside)
				}
			}
			if copied == 0 {
				t.Fatalf("no mirror succeeded in %d tries", failed)
			}
			t.Logf("%d mirrors, %d failed on a swapped entry, nothing leaked", copied, failed)
		})
	}
}

// exchangeLoop swaps a and b (renameat2 RENAME_EXCHANGE) until the test
// ends, as a container writing a shared volume can.
func exchangeLoop(t *testing.T, a, b string) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE); err != nil {
				t.Errorf("rename exchange: %v", err)
				return
			}
		}
	}()
	t.Cleanup(func() { close(stop); wg.Wait() })
}

// TestFSGroupSwappedEntries: fs_group is applied to a volume in which a
// file and a directory are swapped, over and over, with symlinks to a file
// and a directory outside it: the outside ones never change group or mode.
// (Before, the walk's Lchown followed a swapped intermediate directory and
// its Fchmodat followed a swapped last component.)
func TestFSGroupSwappedEntries(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to another group: needs root")
	}
	root := t.TempDir()
	vol := filepath.Join(root, "vol")
	outside := filepath.Join(root, "outside")
	must(t, os.MkdirAll(filepath.Join(vol, "d"), 0o755))
	must(t, os.MkdirAll(outside, 0o700))
	must(t, os.WriteFile(filepath.Join(vol, "f"), []byte("f"), 0o600))
	must(t, os.WriteFile(filepath.Join(vol, "d/x"), []byte("x"), 0o600))
	victim, victimDir := filepath.Join(outside, "victim"), filepath.Join(outside, "dir")
	must(t, os.MkdirAll(victimDir, 0o700))
	must(t, os.WriteFile(victim, []byte("v"), 0o600))
	must(t, os.WriteFile(filepath.Join(victimDir, "x"), []byte("v"), 0o600))
	must(t, os.Symlink(victim, filepath.Join(root, "flink")))
	must(t, os.Symlink(victimDir, filepath.Join(root, "dlink")))
	exchangeLoop(t, filepath.Join(vol, "f"), filepath.Join(root, "flink"))
	exchangeLoop(t, filepath.Join(vol, "d"), filepath.Join(root, "dlink"))
	const gid = 4242
	untouched := func(p string, mode uint32) {
		t.Helper()
		var st unix.Stat_t
		must(t, unix.Lstat(p, &st))
		if st.Gid == gid || st.Mode&0o7777 != mode {
			t.Fatalf("%s, outside the volume, got gid %d mode %o", p, st.Gid, st.Mode&0o7777)
		}
	}
	applied, failed := 0, 0
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if err := setOwnership(vol, FSGroup{GID: gid}, false); err != nil {
			failed++
		} else {
			applied++
		}
		untouched(victim, 0o600)
		untouched(filepath.Join(victimDir, "x"), 0o600)
		untouched(victimDir, 0o700)
	}
	if applied == 0 {
		t.Fatalf("fs_group never applied in %d tries", failed)
	}
	t.Logf("fs_group applied %d times (%d failed on a swapped entry), nothing outside changed", applied, failed)
}

// TestOverlayCreateDirectory: create_directory makes the directory named
// (and what is missing of its parents below the storage root), refuses a
// path through a symlink naming driver_options[i] and creating nothing
// (before, MkdirAll followed it and created the directory outside the
// roots), and what it created goes with the storage.
func TestOverlayCreateDirectory(t *testing.T) {
	m, root := newManager(t)
	lower := t.TempDir()
	must(t, os.WriteFile(filepath.Join(lower, "a"), []byte("lower"), 0o644))
	lowers := "lowerdir=" + lower + ":" + t.TempDir() // read-only: two layers
	outside := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(root, "shared"), 0o755))
	must(t, os.Symlink(outside, filepath.Join(root, "shared/link")))
	const opt = "io.katacontainers.volume.overlayfs.create_directory="
	mp := filepath.Join(root, "c1/rootfs")
	err := m.Add(context.Background(), "c1", "storages", []Storage{{Driver: DriverOverlayfs, Source: "overlay", Fstype: "overlay", MountPoint: mp,
		Options: []string{lowers}, DriverOptions: []string{opt + filepath.Join(root, "shared/link/made/here")}}})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "storages[0].driver_options[0]") {
		t.Fatalf("create_directory through a symlink: %v, want InvalidArgument naming storages[0].driver_options[0]", err)
	}
	if _, err := os.Lstat(filepath.Join(outside, "made")); !os.IsNotExist(err) {
		t.Fatalf("a directory was created outside the roots, through the symlink: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(root, "c1")); !os.IsNotExist(err) {
		t.Fatalf("the refused storage left its mount point: %v", err)
	}
	dir := filepath.Join(root, "c1/layers/upper")
	must(t, m.Add(context.Background(), "c1", "storages", []Storage{{Driver: DriverOverlayfs, Source: "overlay", Fstype: "overlay", MountPoint: mp,
		Options: []string{lowers}, DriverOptions: []string{opt + dir}}}))
	if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() {
		t.Fatalf("create_directory: %v", err)
	}
	must(t, m.Release("c1"))
	if _, err := os.Lstat(filepath.Join(root, "c1/layers")); !os.IsNotExist(err) {
		t.Errorf("created directories left after the storage went: %v", err)
	}
}

// TestWatchableConcurrentFirstMount: watchable-bind storages of one
// watchable directory set up at the same time all land in its one tmpfs
// (before, the first counted itself and then mounted, so the others went
// on before the tmpfs was there: they failed, or their copy was hidden
// under it), and the tmpfs goes with the last of them.
func TestWatchableConcurrentFirstMount(t *testing.T) {
	m, root := newManager(t)
	src := shareDir(t, root, "src")
	must(t, os.WriteFile(filepath.Join(src, "key"), []byte("v1"), 0o644))
	const n = 8
	for round := range 20 {
		dir := filepath.Join(root, fmt.Sprintf("shared/r%d/watchable", round))
		start := make(chan struct{})
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				errs[i] = m.Add(context.Background(), fmt.Sprintf("c%d-%d", round, i), "storages", []Storage{{Driver: DriverWatchableBind, Source: src,
					MountPoint: filepath.Join(dir, fmt.Sprintf("cm%d", i))}})
			}()
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: storage %d: %v", round, i, err)
			}
		}
		if fsType(t, dir) != unix.TMPFS_MAGIC {
			t.Fatalf("round %d: %s is not a tmpfs", round, dir)
		}
		for i := range n {
			if b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("cm%d/key", i))); err != nil || string(b) != "v1" {
				t.Fatalf("round %d: storage %d's copy is not in the tmpfs: %q %v", round, i, b, err)
			}
		}
		for i := range n {
			must(t, m.Release(fmt.Sprintf("c%d-%d", round, i)))
		}
		if ms := mountsUnder(dir); len(ms) != 0 {
			t.Fatalf("round %d: left mounted after the last storage went: %v", round, ms)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Fatalf("round %d: left in %s under the tmpfs: %v", round, dir, ents)
		}
	}
}

// TestWatchableCopySwapped: the copy side of a watchable-bind storage
// (mounted into containers, which may write it) has a directory swapped,
// over and over, with a symlink to a directory outside the copy while the
// source is mirrored into it: nothing outside is ever written or removed.
// (Before, the copy side used full paths: the temporary file, the rename
// and the removal of entries gone from the source followed the swapped
// directory, writing a/key outside after a few hundred mirrors.)
func TestWatchableCopySwapped(t *testing.T) {
	root := t.TempDir()
	src := filepath.Join(root, "src")
	must(t, os.MkdirAll(filepath.Join(src, "a"), 0o755))
	must(t, os.WriteFile(filepath.Join(src, "a/key"), []byte("inside"), 0o644))
	outside := filepath.Join(root, "outside")
	must(t, os.MkdirAll(outside, 0o755))
	// "stale" is not in the source: a copy-side listing of a/ that follows
	// the swapped link sees it as gone and removes it.
	must(t, os.WriteFile(filepath.Join(outside, "stale"), []byte("keep me"), 0o644))
	dst := filepath.Join(root, "dst")
	must(t, os.Mkdir(dst, 0o755))
	must(t, mirror(&watched{src: src, dst: dst, seen: map[string]time.Time{}}))
	p1, p2 := filepath.Join(dst, "a"), filepath.Join(root, "spare")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			// The mirror may replace dst/a: keep a fresh link at spare
			// and swap it in and out.
			if fi, err := os.Lstat(p2); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
				os.RemoveAll(p2)
				os.Symlink(outside, p2)
			}
			unix.Renameat2(unix.AT_FDCWD, p1, unix.AT_FDCWD, p2, unix.RENAME_EXCHANGE)
			unix.Renameat2(unix.AT_FDCWD, p1, unix.AT_FDCWD, p2, unix.RENAME_EXCHANGE)
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	copied, failed := 0, 0
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		// A fresh entry each time: every file is copied again.
		if err := mirror(&watched{src: src, dst: dst, seen: map[string]time.Time{}}); err != nil {
			failed++
		} else {
			copied++
		}
		ents, err := os.ReadDir(outside)
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) != 1 || ents[0].Name() != "stale" {
			names := []string{}
			for _, e := range ents {
				names = append(names, e.Name())
			}
			t.Fatalf("after %d mirrors: %s, outside the copy, holds %v (want only stale)", copied+failed, outside, names)
		}
		if b, err := os.ReadFile(filepath.Join(outside, "stale")); err != nil || string(b) != "keep me" {
			t.Fatalf("after %d mirrors: %s/stale changed: %q %v", copied+failed, outside, b, err)
		}
	}
	if copied == 0 {
		t.Fatalf("no mirror succeeded in %d tries", failed)
	}
	t.Logf("%d mirrors, %d failed on a swapped entry, nothing outside touched", copied, failed)
}

// TestWatchableNeverOpensSwappedSpecial: a FIFO swapped, over and over,
// with a regular file of a watched source (between the walk's fstatat and
// the open) is never opened by the mirror: entries are opened O_PATH,
// checked, and reopened for reading only when they are regular files.
// Opens of the FIFO are counted with inotify IN_OPEN (a FIFO stands in for
// a device node: opening either has effects, and the share has no nodev).
// (Before, the entry was opened O_RDONLY|O_NONBLOCK before its type was
// checked.)
func TestWatchableNeverOpensSwappedSpecial(t *testing.T) {
	root := t.TempDir()
	src := filepath.Join(root, "src")
	must(t, os.MkdirAll(src, 0o755))
	must(t, os.WriteFile(filepath.Join(src, "f"), []byte("data"), 0o644))
	fifo := filepath.Join(root, "fifo")
	must(t, unix.Mkfifo(fifo, 0o644))
	in, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	must(t, err)
	defer unix.Close(in)
	if _, err := unix.InotifyAddWatch(in, fifo, unix.IN_OPEN); err != nil {
		t.Fatal(err)
	}
	opens := func() int {
		n := 0
		buf := make([]byte, 4096)
		for {
			k, err := unix.Read(in, buf)
			if err != nil || k <= 0 {
				return n
			}
			for off := 0; off+unix.SizeofInotifyEvent <= k; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				if ev.Mask&unix.IN_OPEN != 0 {
					n++
				}
				off += unix.SizeofInotifyEvent + int(ev.Len)
			}
		}
	}
	exchangeLoop(t, filepath.Join(src, "f"), fifo)
	dst := filepath.Join(root, "dst")
	must(t, os.Mkdir(dst, 0o755))
	copied, failed := 0, 0
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if err := mirror(&watched{src: src, dst: dst, seen: map[string]time.Time{}}); err != nil {
			failed++
		} else {
			copied++
		}
		if n := opens(); n != 0 {
			t.Fatalf("after %d mirrors: the FIFO swapped into the source was opened %d times", copied+failed, n)
		}
	}
	t.Logf("%d mirrors (%d failed on a swapped entry), the FIFO never opened", copied, failed)
}
