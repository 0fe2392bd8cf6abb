package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/uevent"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/loopdev"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// newManager returns a Manager rooted in a fresh directory (mounts there
// are cleaned up with the test).
func newManager(t *testing.T) (*Manager, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("storages are mounted: needs root")
	}
	root := t.TempDir()
	m := New(Config{Roots: []string{root}, ContainerBase: filepath.Join(root, "containers"),
		Devices: uevent.NewRegistry("", 500*time.Millisecond), WatchInterval: 50 * time.Millisecond})
	t.Cleanup(func() {
		m.Close()
		assertNoMountsUnder(t, root)
	})
	return m, root
}

// mountsUnder lists mount points at or below dir.
func mountsUnder(dir string) []string {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 {
			mp := unescapeMount(f[4])
			if mp == dir || strings.HasPrefix(mp, dir+"/") {
				out = append(out, mp)
			}
		}
	}
	return out
}

func assertNoMountsUnder(t *testing.T, dir string) {
	t.Helper()
	if ms := mountsUnder(dir); len(ms) > 0 {
		t.Errorf("mounts left under %s: %v", dir, ms)
		for _, mp := range ms {
			unix.Unmount(mp, unix.MNT_DETACH)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func fsType(t *testing.T, p string) int64 {
	t.Helper()
	var st unix.Statfs_t
	must(t, unix.Statfs(p, &st))
	return st.Type
}

func TestEphemeral(t *testing.T) {
	m, root := newManager(t)
	shm := filepath.Join(root, "sandbox/shm")
	must(t, m.Add(context.Background(), "", "storages", []Storage{{
		Driver: DriverEphemeral, Source: "shm", Fstype: "tmpfs", MountPoint: shm,
		Options: []string{"noexec", "nosuid", "nodev", "mode=1777", "size=2097152", "fsgid=4321"},
	}}))
	var st unix.Statfs_t
	must(t, unix.Statfs(shm, &st))
	if st.Type != unix.TMPFS_MAGIC || st.Blocks*uint64(st.Bsize) != 2<<20 {
		t.Fatalf("shm: type %x, %d bytes; want tmpfs of 2 MiB", st.Type, st.Blocks*uint64(st.Bsize))
	}
	if st.Flags&unix.ST_NOEXEC == 0 || st.Flags&unix.ST_NODEV == 0 {
		t.Errorf("shm flags %x: want noexec, nodev", st.Flags)
	}
	fi, err := os.Stat(shm)
	must(t, err)
	if fi.Sys().(*syscall.Stat_t).Gid != 4321 || fi.Mode()&os.ModeSetgid == 0 || fi.Mode()&os.ModeSticky == 0 {
		t.Errorf("shm: gid %d mode %v; want fsgid 4321, setgid, sticky 1777", fi.Sys().(*syscall.Stat_t).Gid, fi.Mode())
	}
	// Sandbox storages stay until Close.
	must(t, m.Release(""))
	if fsType(t, shm) != unix.TMPFS_MAGIC {
		t.Fatal("sandbox shm unmounted by Release")
	}
	// UpdateEphemeralMounts: remount with a new size.
	h := &Handler{M: m}
	if _, err := h.UpdateEphemeralMounts(context.Background(), pbUpdate(shm, "size=4194304")); err != nil {
		t.Fatal(err)
	}
	must(t, unix.Statfs(shm, &st))
	if st.Blocks*uint64(st.Bsize) != 4<<20 {
		t.Fatalf("after UpdateEphemeralMounts: %d bytes, want 4 MiB", st.Blocks*uint64(st.Bsize))
	}
	// A mount under the roots the agent did not set up as an ephemeral
	// storage is not the request's to change; a bad item later in the
	// request leaves the earlier ones as they were.
	foreign := filepath.Join(root, "foreign")
	must(t, os.MkdirAll(foreign, 0o755))
	must(t, unix.Mount("tmpfs", foreign, "tmpfs", 0, "size=1m"))
	defer unix.Unmount(foreign, unix.MNT_DETACH)
	if _, err := h.UpdateEphemeralMounts(context.Background(), pbUpdate(foreign, "size=8388608")); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "storages[0].mount_point") {
		t.Errorf("remount of a mount the agent does not own: %v, want InvalidArgument naming storages[0].mount_point", err)
	}
	bad := pbUpdate(shm, "size=8388608")
	bad.Storages = append(bad.Storages, &pb.Storage{Driver: DriverLocal, MountPoint: shm})
	if _, err := h.UpdateEphemeralMounts(context.Background(), bad); status.Code(err) != codes.InvalidArgument {
		t.Errorf("request with a bad second item: %v, want InvalidArgument", err)
	}
	must(t, unix.Statfs(shm, &st))
	if st.Blocks*uint64(st.Bsize) != 4<<20 {
		t.Fatalf("a refused request changed the shm: %d bytes, want 4 MiB still", st.Blocks*uint64(st.Bsize))
	}
	must(t, unix.Statfs(foreign, &st))
	if st.Blocks*uint64(st.Bsize) != 1<<20 {
		t.Fatalf("a refused request changed the foreign tmpfs: %d bytes", st.Blocks*uint64(st.Bsize))
	}
	must(t, unix.Unmount(foreign, 0))
	must(t, m.Close())
	if _, err := os.Stat(shm); !os.IsNotExist(err) {
		t.Errorf("shm mount point left after Close: %v", err)
	}
}

func TestLocal(t *testing.T) {
	m, root := newManager(t)
	dir := filepath.Join(root, "sandbox/local/vol")
	must(t, m.Add(context.Background(), "c1", "storages", []Storage{{Driver: DriverLocal, MountPoint: dir, Options: []string{"mode=0750", "fsgid=77"}}}))
	fi, err := os.Stat(dir)
	must(t, err)
	if fi.Mode().Perm() != 0o750 || fi.Mode()&os.ModeSetgid == 0 || fi.Sys().(*syscall.Stat_t).Gid != 77 {
		t.Fatalf("local dir: mode %v gid %d", fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid)
	}
}

func TestOverlayfsRW(t *testing.T) {
	m, root := newManager(t)
	lower := t.TempDir()
	must(t, os.WriteFile(filepath.Join(lower, "a"), []byte("lower"), 0o644))
	mp := filepath.Join(root, "c1/rootfs")
	must(t, m.Add(context.Background(), "c1", "storages", []Storage{{Driver: DriverOverlayfs, Source: "overlay", Fstype: "overlay", MountPoint: mp,
		Options: []string{"lowerdir=" + lower, "io.katacontainers.fs-opt.overlay-rw"}}}))
	if b, err := os.ReadFile(filepath.Join(mp, "a")); err != nil || string(b) != "lower" {
		t.Fatalf("read through overlay: %q %v", b, err)
	}
	must(t, os.WriteFile(filepath.Join(mp, "b"), []byte("upper"), 0o644))
	if _, err := os.Stat(filepath.Join(lower, "b")); !os.IsNotExist(err) {
		t.Fatal("write reached the lower dir")
	}
	must(t, m.Release("c1"))
	if len(mountsUnder(root)) != 0 {
		t.Fatal("overlay still mounted after its container left")
	}
	if _, err := os.Stat(filepath.Join(root, "containers/c1/overlay-upper")); !os.IsNotExist(err) {
		t.Errorf("upper dir left: %v", err)
	}
}

// TestBlockRefcount: a disk (loop device, ext4) used by two containers is
// mounted once and unmounted with the last of them.
func TestBlockRefcount(t *testing.T) {
	m, root := newManager(t)
	img := loopdev.File(t, 32<<20)
	loopdev.Run(t, "mkfs.ext4", "-q", "-F", img)
	dev := loopdev.Attach(t, img)
	mp := filepath.Join(root, "shared/containers/vol1")
	s := Storage{Driver: DriverBlk, Source: dev, Fstype: "ext4", MountPoint: mp, FSGroup: &FSGroup{GID: 555}}
	must(t, m.Add(context.Background(), "c1", "storages", []Storage{s}))
	must(t, os.WriteFile(filepath.Join(mp, "f"), []byte("x"), 0o600))
	must(t, m.Add(context.Background(), "c2", "storages", []Storage{s}))
	if n := m.Refs(mp); n != 2 {
		t.Fatalf("refs = %d, want 2", n)
	}
	if got := len(mountsUnder(mp)); got != 1 {
		t.Fatalf("%d mounts at %s, want 1", got, mp)
	}
	fi, err := os.Stat(mp)
	must(t, err)
	if fi.Sys().(*syscall.Stat_t).Gid != 555 || fi.Mode()&os.ModeSetgid == 0 {
		t.Errorf("fs_group not applied: %v gid %d", fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid)
	}
	must(t, m.Release("c1"))
	if b, err := os.ReadFile(filepath.Join(mp, "f")); err != nil || string(b) != "x" {
		t.Fatalf("volume gone with the first container: %v", err)
	}
	must(t, m.Release("c2"))
	if len(mountsUnder(root)) != 0 {
		t.Fatal("disk still mounted after the last container left")
	}
	if _, err := os.Stat(mp); !os.IsNotExist(err) {
		t.Errorf("mount point left: %v", err)
	}
	// A shared storage survives its container.
	s.Shared = true
	must(t, m.Add(context.Background(), "c3", "storages", []Storage{s}))
	must(t, m.Release("c3"))
	if len(mountsUnder(mp)) != 1 {
		t.Fatal("shared storage unmounted with its container")
	}
}

// shareDir makes a directory under the manager's root for a watched
// source: sources must be inside the storage roots.
func shareDir(t *testing.T, root, name string) string {
	t.Helper()
	d := filepath.Join(root, "shared/containers", name+"-src")
	must(t, os.MkdirAll(d, 0o755))
	return d
}

func TestWatchableBind(t *testing.T) {
	m, root := newManager(t)
	src := shareDir(t, root, "src")
	must(t, os.WriteFile(filepath.Join(src, "key"), []byte("v1"), 0o644))
	mp := filepath.Join(root, "shared/containers/watchable/cm1")
	must(t, m.Add(context.Background(), "c1", "storages", []Storage{{Driver: DriverWatchableBind, Source: src, MountPoint: mp}}))
	if fsType(t, filepath.Dir(mp)) != unix.TMPFS_MAGIC {
		t.Fatal("watchable dir is not a tmpfs")
	}
	eventually(t, filepath.Join(mp, "key"), "v1")
	// An update (later mtime) and a new file reach the copy.
	must(t, os.WriteFile(filepath.Join(src, "key"), []byte("v2"), 0o644))
	future := time.Now().Add(time.Second)
	os.Chtimes(filepath.Join(src, "key"), future, future)
	must(t, os.WriteFile(filepath.Join(src, "new"), []byte("n"), 0o644))
	eventually(t, filepath.Join(mp, "key"), "v2")
	eventually(t, filepath.Join(mp, "new"), "n")
	must(t, os.Remove(filepath.Join(src, "new")))
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(mp, "new")); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("removed file still mirrored")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Over Kata's limit of 16 files: a bind mount instead.
	big := shareDir(t, root, "big")
	for i := range WatchMaxEntries + 1 {
		must(t, os.WriteFile(filepath.Join(big, "f"+string(rune('a'+i))), []byte("x"), 0o644))
	}
	mp2 := filepath.Join(root, "shared/containers/watchable/cm2")
	must(t, m.Add(context.Background(), "c1", "storages", []Storage{{Driver: DriverWatchableBind, Source: big, MountPoint: mp2}}))
	if !isMountPoint(mp2) {
		t.Fatal("a storage over the limits is not bind-mounted")
	}
	must(t, m.Release("c1"))
	if ms := mountsUnder(root); len(ms) != 0 {
		t.Fatalf("left after Release: %v", ms)
	}
}

func eventually(t *testing.T, p, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(p)
		if err == nil && string(b) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %q (%v), want %q", p, b, err, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestBadStorages: each bad storage gets a clear error of the right class
// and leaves nothing mounted or created; a good storage before it in the
// same request is undone too.
func TestBadStorages(t *testing.T) {
	m, root := newManager(t)
	outside := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(root, "planted"), 0o755))
	must(t, os.Symlink(outside, filepath.Join(root, "planted/link")))
	good := Storage{Driver: DriverEphemeral, Fstype: "tmpfs", MountPoint: filepath.Join(root, "first")}
	for _, c := range []struct {
		name string
		s    Storage
		code codes.Code
		msg  string
	}{
		{"unknown driver", Storage{Driver: "nfs-magic", MountPoint: root + "/x"}, codes.InvalidArgument, "storages[1].driver"},
		{"kata-only driver", Storage{Driver: "blk-ccw", MountPoint: root + "/x"}, codes.Unimplemented, "s390x"},
		{"missing share tag", Storage{Driver: DriverVirtioFS, MountPoint: root + "/x"}, codes.InvalidArgument, "storages[1].source"},
		{"missing block device", Storage{Driver: DriverBlk, Source: "/dev/keel-nope", Fstype: "ext4", MountPoint: root + "/x"}, codes.DeadlineExceeded, "storages[1].source"},
		{"missing watched source", Storage{Driver: DriverWatchableBind, Source: "/nonexistent/cm", MountPoint: root + "/w/x"}, codes.InvalidArgument, "storages[1].source"},
		{"outside roots", Storage{Driver: DriverEphemeral, Fstype: "tmpfs", MountPoint: outside + "/x"}, codes.InvalidArgument, "outside"},
		{"dotdot", Storage{Driver: DriverEphemeral, Fstype: "tmpfs", MountPoint: root + "/../x"}, codes.InvalidArgument, "clean absolute"},
		{"relative", Storage{Driver: DriverEphemeral, Fstype: "tmpfs", MountPoint: "run/x"}, codes.InvalidArgument, "clean absolute"},
		{"symlink on the way", Storage{Driver: DriverEphemeral, Fstype: "tmpfs", MountPoint: root + "/planted/link/x"}, codes.InvalidArgument, "symlink"},
		{"option adds options", Storage{Driver: DriverEphemeral, Fstype: "tmpfs", MountPoint: root + "/x", Options: []string{"size=1m,mode=4777"}}, codes.InvalidArgument, "storages[1].options[0]"},
		{"NUL in option", Storage{Driver: DriverEphemeral, Fstype: "tmpfs", MountPoint: root + "/x", Options: []string{"size=1m\x00x"}}, codes.InvalidArgument, "options[0]"},
		{"bad fstype", Storage{Driver: DriverEphemeral, Fstype: "ext4", MountPoint: root + "/x"}, codes.InvalidArgument, "fstype"},
		{"bad pci path", Storage{Driver: DriverBlk, Source: "zz/00", Fstype: "ext4", MountPoint: root + "/x"}, codes.InvalidArgument, "PCI path"},
		{"pci path never appears", Storage{Driver: DriverBlk, Source: "1e/1f", Fstype: "ext4", MountPoint: root + "/x"}, codes.DeadlineExceeded, "1e/1f"},
		{"mount fails", Storage{Driver: DriverBlk, Source: "/dev/null", Fstype: "ext4", MountPoint: root + "/x"}, codes.InvalidArgument, "not a block device"},
		{"watchable tmpfs over the share", Storage{Driver: DriverWatchableBind, Source: root, MountPoint: root + "/shared/cm"}, codes.InvalidArgument, "watchable"},
		{"watched source outside the roots", Storage{Driver: DriverWatchableBind, Source: "/etc", MountPoint: root + "/shared/containers/watchable/etc"}, codes.InvalidArgument, "storages[1].source \"/etc\": outside"},
		{"watched source through a symlink", Storage{Driver: DriverWatchableBind, Source: root + "/planted/link", MountPoint: root + "/shared/containers/watchable/l"}, codes.InvalidArgument, "passes through a symlink"},
		{"image pulled in the guest", Storage{Driver: "image_guest_pull", Source: "docker.io/library/busybox", MountPoint: root + "/x"}, codes.Unimplemented, `storages[1].driver "image_guest_pull"`},
		{"ephemeral key without create_filesystem", Storage{Driver: DriverBlk, Source: "02/00", Fstype: "ext4", MountPoint: root + "/x", DriverOptions: []string{"encryption_key=ephemeral"}}, codes.InvalidArgument, `needs "create_filesystem"`},
		{"create_filesystem for xfs", Storage{Driver: DriverBlk, Source: "02/00", Fstype: "xfs", MountPoint: root + "/x", DriverOptions: []string{"create_filesystem"}}, codes.InvalidArgument, "storages[1].fstype"},
		{"ephemeral key", Storage{Driver: DriverBlk, Source: "02/00", Fstype: "ext4", MountPoint: root + "/x", DriverOptions: []string{"create_filesystem", "encryption_key=ephemeral"}}, codes.Unimplemented, `storages[1].driver_options "encryption_key=ephemeral"`},
		{"mount point reused by another driver", Storage{Driver: DriverLocal, MountPoint: filepath.Join(root, "first")}, codes.InvalidArgument, "already used"},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := listTree(t, root)
			start := time.Now()
			err := m.Add(context.Background(), "c1", "storages", []Storage{good, c.s})
			if err == nil {
				t.Fatal("accepted")
			}
			if Code(err) != c.code || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err = %v (%s), want %s containing %q", err, Code(err), c.code, c.msg)
			}
			if c.code == codes.DeadlineExceeded && time.Since(start) < 500*time.Millisecond {
				t.Errorf("gave up after %s, before the 500ms hotplug timeout", time.Since(start))
			}
			if ms := mountsUnder(root); len(ms) > 0 {
				t.Fatalf("mounts left: %v", ms)
			}
			if after := listTree(t, root); after != before {
				t.Fatalf("files left:\nbefore %s\nafter  %s", before, after)
			}
			if n := m.Refs(good.MountPoint); n != 0 {
				t.Fatalf("refs on the first storage: %d", n)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Fatalf("created outside the roots: %v", ents)
			}
		})
	}
}

func listTree(t *testing.T, root string) string {
	var b strings.Builder
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			b.WriteString(strings.TrimPrefix(p, root) + " ")
		}
		return nil
	})
	return b.String()
}

func TestParseOptions(t *testing.T) {
	flags, data, err := parseOptions("o", []string{"ro", "nosuid", "size=1m", "", "mode=755", "rw"})
	if err != nil || flags != unix.MS_NOSUID || data != "size=1m,mode=755" {
		t.Fatalf("got %x %q %v", flags, data, err)
	}
	if _, _, err := parseOptions("o", []string{"lowerdir=/a,upperdir=/b"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("comma accepted: %v", err)
	}
}

func FuzzParseOptions(f *testing.F) {
	f.Add("size=1m", "ro")
	f.Add("a,b", "c")
	f.Fuzz(func(t *testing.T, a, b string) {
		_, data, err := parseOptions("o", []string{a, b})
		if err != nil {
			return
		}
		// Each accepted item is at most one option in the data string.
		n := 0
		if data != "" {
			n = strings.Count(data, ",") + 1
		}
		if n > 2 || strings.ContainsRune(data, 0) {
			t.Fatalf("%q %q -> data %q", a, b, data)
		}
	})
}

// TestConcurrentUsers: containers adding and releasing the same storage
// at once end with it mounted exactly while someone holds it.
func TestConcurrentUsers(t *testing.T) {
	m, root := newManager(t)
	a, b := t.TempDir(), t.TempDir()
	must(t, os.WriteFile(filepath.Join(a, "f"), []byte("a"), 0o644))
	mp := filepath.Join(root, "ro-overlay")
	s := Storage{Driver: DriverOverlayfs, Fstype: "overlay", MountPoint: mp, Options: []string{"lowerdir=" + a + ":" + b}}
	done := make(chan error)
	for i := range 8 {
		go func() {
			owner := fmt.Sprintf("c%d", i)
			for range 10 {
				if err := m.Add(context.Background(), owner, "storages", []Storage{s}); err != nil {
					done <- err
					return
				}
				if b, err := os.ReadFile(filepath.Join(mp, "f")); err != nil || string(b) != "a" {
					done <- fmt.Errorf("%s: read %q %v while holding the storage", owner, b, err)
					return
				}
				if err := m.Release(owner); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	if n := m.Refs(mp); n != 0 {
		t.Fatalf("refs = %d", n)
	}
	if ms := mountsUnder(root); len(ms) != 0 {
		t.Fatalf("left mounted: %v", ms)
	}
}

// TestHugetlbfs: the pages are reserved, then hugetlbfs is mounted with
// the page size asked.
func TestHugetlbfs(t *testing.T) {
	m, root := newManager(t)
	nr := "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
	old, err := os.ReadFile(nr)
	if err != nil {
		t.Skipf("no 2 MiB huge pages on this kernel: %v", err)
	}
	t.Cleanup(func() { os.WriteFile(nr, old, 0) })
	mp := filepath.Join(root, "sandbox/hugepages")
	must(t, m.Add(context.Background(), "", "storages", []Storage{{Driver: DriverEphemeral, Source: "nodev", Fstype: "hugetlbfs", MountPoint: mp,
		Options: []string{"pagesize=2097152", "size=4194304"}}}))
	var st unix.Statfs_t
	must(t, unix.Statfs(mp, &st))
	if st.Type != unix.HUGETLBFS_MAGIC || st.Bsize != 2<<20 {
		t.Fatalf("type %x bsize %d: want hugetlbfs with 2 MiB pages", st.Type, st.Bsize)
	}
	if n, err := readUint(nr); err != nil || n < 2 {
		t.Fatalf("nr_hugepages = %d %v, want >= 2", n, err)
	}
	if err := m.Add(context.Background(), "", "storages", []Storage{{Driver: DriverEphemeral, Fstype: "hugetlbfs", MountPoint: mp + "2",
		Options: []string{"pagesize=12345", "size=4194304"}}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad page size: %v", err)
	}
}

// TestDiskByName: mmioblk and nvdimm name their disk by /dev path; the
// agent waits for it by name (here a loop device, already present), and
// adds dax only when the device supports it (a loop device does not).
func TestDiskByName(t *testing.T) {
	m, root := newManager(t)
	img := loopdev.File(t, 32<<20)
	loopdev.Run(t, "mkfs.ext4", "-q", "-F", img)
	dev := loopdev.Attach(t, img)
	for _, driver := range []string{DriverMmioBlk, DriverNvdimm} {
		mp := filepath.Join(root, driver)
		must(t, m.Add(context.Background(), driver, "storages", []Storage{{Driver: driver, Source: dev, Fstype: "ext4", MountPoint: mp}}))
		if fsType(t, mp) != unix.EXT4_SUPER_MAGIC {
			t.Fatalf("%s: not an ext4 mount", driver)
		}
		data, _ := os.ReadFile("/proc/self/mountinfo")
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) > 5 && f[4] == mp && strings.Contains(line, "dax") {
				t.Errorf("%s: dax on a device without DAX: %s", driver, line)
			}
		}
		must(t, m.Release(driver))
	}
	err := m.Add(context.Background(), "x", "storages", []Storage{{Driver: DriverMmioBlk, Source: "/dev/vdzz", Fstype: "ext4", MountPoint: filepath.Join(root, "never")}})
	if Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a disk that never appears: %v", err)
	}
}

// TestFSGroupOnRootMismatch: with OnRootMismatch a volume whose root
// already has the group and modes is left alone; Always re-owns it all.
func TestFSGroupOnRootMismatch(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	dir := t.TempDir()
	inner := filepath.Join(dir, "inner")
	must(t, os.WriteFile(inner, nil, 0o600))
	must(t, os.Chown(dir, 0, 900))
	must(t, os.Chmod(dir, 0o770|os.ModeSetgid))
	must(t, setOwnership(dir, FSGroup{GID: 900, OnRootMismatch: true}, false))
	if st, _ := os.Stat(inner); st.Sys().(*syscall.Stat_t).Gid != 0 {
		t.Fatal("OnRootMismatch re-owned a volume whose root matched")
	}
	must(t, setOwnership(dir, FSGroup{GID: 900}, false))
	st, _ := os.Stat(inner)
	if st.Sys().(*syscall.Stat_t).Gid != 900 || st.Mode().Perm() != 0o660 {
		t.Fatalf("Always: inner gid %d mode %v, want 900 and 0660", st.Sys().(*syscall.Stat_t).Gid, st.Mode())
	}
}

// TestWatchableAfterClose: a sandbox created after DestroySandbox (host
// mode) still gets its watchable storages polled.
func TestWatchableAfterClose(t *testing.T) {
	m, root := newManager(t)
	src := shareDir(t, root, "src")
	must(t, os.WriteFile(filepath.Join(src, "k"), []byte("1"), 0o644))
	mp := filepath.Join(root, "watchable/cm")
	add := func() {
		must(t, m.Add(context.Background(), "c", "storages", []Storage{{Driver: DriverWatchableBind, Source: src, MountPoint: mp}}))
	}
	add()
	must(t, m.Close())
	add()
	must(t, os.WriteFile(filepath.Join(src, "k"), []byte("2"), 0o644))
	future := time.Now().Add(2 * time.Second)
	os.Chtimes(filepath.Join(src, "k"), future, future)
	eventually(t, filepath.Join(mp, "k"), "2")
}

// TestHugetlbfsReservationGivenBack: huge pages reserved for a hugetlbfs
// storage are given back when its mount fails (nr_hugepages back to what
// the storages still set up ask) and when the storages are torn down
// (back to what the agent found).
func TestHugetlbfsReservationGivenBack(t *testing.T) {
	m, root := newManager(t)
	nr := "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
	old, err := os.ReadFile(nr)
	if err != nil {
		t.Skipf("no 2 MiB huge pages on this kernel: %v", err)
	}
	t.Cleanup(func() { os.WriteFile(nr, old, 0) })
	before, err := readUint(nr)
	must(t, err)
	pages := func() uint64 {
		t.Helper()
		n, err := readUint(nr)
		must(t, err)
		return n
	}
	two, three := before+2, before+3
	must(t, m.Add(context.Background(), "", "storages", []Storage{{Driver: DriverEphemeral, Source: "nodev", Fstype: "hugetlbfs", MountPoint: filepath.Join(root, "sandbox/huge1"),
		Options: []string{"pagesize=2097152", fmt.Sprintf("size=%d", two*2<<20)}}}))
	if n := pages(); n != two {
		t.Fatalf("nr_hugepages = %d after a storage of %d pages, want %d", n, two, two)
	}
	// Reserved, then the mount fails (hugetlbfs refuses mode=zzz).
	err = m.Add(context.Background(), "", "storages", []Storage{{Driver: DriverEphemeral, Source: "nodev", Fstype: "hugetlbfs", MountPoint: filepath.Join(root, "sandbox/huge2"),
		Options: []string{"pagesize=2097152", fmt.Sprintf("size=%d", three*2<<20), "mode=zzz"}}})
	if err == nil {
		t.Fatal("hugetlbfs with mode=zzz mounted")
	}
	if n := pages(); n != two {
		t.Fatalf("nr_hugepages = %d after a failed storage, want the %d the live one asks", n, two)
	}
	must(t, m.Close())
	if n := pages(); n != before {
		t.Fatalf("nr_hugepages = %d after the storages went, want the %d found", n, before)
	}
}

// fakeHugepages makes a fake sysfs with nr_hugepages at base for 2 MiB
// pages, whose "kernel" allocates at most limit pages, and a Manager
// reading it.
func fakeHugepages(t *testing.T, base, limit uint64) (*Manager, string) {
	t.Helper()
	sysfs := t.TempDir()
	dir := filepath.Join(sysfs, "kernel/mm/hugepages/hugepages-2048kB")
	must(t, os.MkdirAll(dir, 0o755))
	nr := filepath.Join(dir, "nr_hugepages")
	must(t, os.WriteFile(nr, []byte(fmt.Sprint(base)), 0o644))
	old := writeHugepages
	writeHugepages = func(p string, n uint64) error { return old(p, min(n, limit)) }
	t.Cleanup(func() { writeHugepages = old })
	return New(Config{Sysfs: sysfs, Roots: []string{t.TempDir()}}), nr
}

// TestHugepagesShortReservationGivenBack: when the kernel allocates fewer
// huge pages than asked, the reservation fails and the pages it did get
// are given back (before, this path deadlocked: release took hugeMu,
// already held; and past that, the agent remembered the count it asked
// for, took the count read back for someone else's and left the partial
// pages reserved).
func TestHugepagesShortReservationGivenBack(t *testing.T) {
	m, nr := fakeHugepages(t, 1, 3)
	_, err := m.reserveHugepages("storages[0]", []string{"pagesize=2097152", fmt.Sprintf("size=%d", 5*2<<20)})
	if err == nil {
		t.Fatal("5 pages reserved where the kernel gives 3")
	}
	if n, err := readUint(nr); err != nil || n != 1 {
		t.Fatalf("nr_hugepages = %d %v after a short reservation, want the 1 found", n, err)
	}
}

// TestHugepagesReadFailureReleased: a reservation whose read of
// nr_hugepages fails is dropped with its error (before, its release was
// returned with the error and discarded, so its count stayed wanted and
// nr_hugepages never went back down).
func TestHugepagesReadFailureReleased(t *testing.T) {
	m, nr := fakeHugepages(t, 0, 100)
	opts := func(pages int) []string {
		return []string{"pagesize=2097152", fmt.Sprintf("size=%d", pages*2<<20)}
	}
	release, err := m.reserveHugepages("storages[0]", opts(2))
	must(t, err)
	// nr_hugepages unreadable for the second storage.
	must(t, os.Rename(nr, nr+".away"))
	if _, err := m.reserveHugepages("storages[1]", opts(4)); err == nil {
		t.Fatal("reserved with nr_hugepages unreadable")
	}
	must(t, os.Rename(nr+".away", nr))
	must(t, release())
	if n, err := readUint(nr); err != nil || n != 0 {
		t.Fatalf("nr_hugepages = %d %v after the storages went, want the 0 found", n, err)
	}
}

// TestLateDropAfterClose: references a create still held when the sandbox
// was destroyed (its rollback runs late) are dropped after a new storage
// took the same mount point: the new one keeps its reference and stays set
// up (before, Refs held mount points and the late Drop took the new
// storage's reference and tore it down).
func TestLateDropAfterClose(t *testing.T) {
	m, root := newManager(t)
	src := shareDir(t, root, "src")
	must(t, os.WriteFile(filepath.Join(src, "k"), []byte("1"), 0o644))
	mp := filepath.Join(root, "watchable/cm")
	st := []Storage{{Driver: DriverWatchableBind, Source: src, MountPoint: mp}}
	late, err := m.Acquire(context.Background(), "old", "storages", st)
	must(t, err)
	must(t, m.Close())
	must(t, m.Add(context.Background(), "new", "storages", st))
	must(t, m.Drop(late))
	if n := m.Refs(mp); n != 1 {
		t.Fatalf("refs on %s = %d after a late Drop of the old sandbox's references, want the new storage's 1", mp, n)
	}
	if b, err := os.ReadFile(filepath.Join(mp, "k")); err != nil || string(b) != "1" {
		t.Fatalf("the new storage's copy is gone after a late Drop: %q %v", b, err)
	}
	must(t, m.Release("new"))
	if n := m.Refs(mp); n != 0 {
		t.Fatalf("refs = %d after the new owner's Release", n)
	}
}

// TestOverlayRWKeepsPreexistingDirs: the rw overlay's upper and work
// directories are removed on teardown only if the storage created them:
// ones already there (with their content) stay (before, they were
// RemoveAll'ed either way).
func TestOverlayRWKeepsPreexistingDirs(t *testing.T) {
	m, root := newManager(t)
	lower := t.TempDir()
	must(t, os.WriteFile(filepath.Join(lower, "a"), []byte("lower"), 0o644))
	base := filepath.Join(root, "containers/c1")
	upper, work := filepath.Join(base, "overlay-upper"), filepath.Join(base, "overlay-work")
	must(t, os.MkdirAll(upper, 0o755))
	must(t, os.MkdirAll(work, 0o755))
	must(t, os.WriteFile(filepath.Join(upper, "pre"), []byte("was here"), 0o644))
	mp := filepath.Join(root, "c1/rootfs")
	must(t, m.Add(context.Background(), "c1", "storages", []Storage{{Driver: DriverOverlayfs, Source: "overlay", Fstype: "overlay", MountPoint: mp,
		Options: []string{"lowerdir=" + lower, "io.katacontainers.fs-opt.overlay-rw"}}}))
	if b, err := os.ReadFile(filepath.Join(mp, "pre")); err != nil || string(b) != "was here" {
		t.Fatalf("the pre-existing upper dir is not the overlay's upper: %q %v", b, err)
	}
	must(t, m.Release("c1"))
	if b, err := os.ReadFile(filepath.Join(upper, "pre")); err != nil || string(b) != "was here" {
		t.Fatalf("the pre-existing upper dir's content went with the storage: %q %v", b, err)
	}
	if _, err := os.Stat(work); err != nil {
		t.Fatalf("the pre-existing work dir went with the storage: %v", err)
	}
}
