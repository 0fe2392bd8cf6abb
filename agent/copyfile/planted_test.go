package copyfile

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/keelvm/keel/protocol/grpc"
)

// plant creates an entry of the given kind at path, as a hostile container
// sharing the directory could.
func plant(t *testing.T, kind, path string) {
	t.Helper()
	var err error
	switch kind {
	case "FIFO":
		err = unix.Mkfifo(path, 0o666)
	case "socket":
		var l *net.UnixListener
		l, err = net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err == nil {
			l.SetUnlinkOnClose(false)
			t.Cleanup(func() { l.Close() })
		}
	case "character device":
		if os.Geteuid() != 0 {
			t.Skip("mknod of a character device needs root")
		}
		err = unix.Mknod(path, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))) // /dev/null's numbers
	case "symlink":
		err = os.Symlink("/dev/zero", path)
	case "directory":
		err = os.Mkdir(path, 0o755)
	}
	if err != nil {
		t.Fatalf("plant %s at %s: %v", kind, path, err)
	}
}

// The case: a FIFO at <path>.tmp hung CopyFile in open(2) while it
// held the copier's mutex, so every later CopyFile hung too.
func TestFIFOTmpDoesNotWedgeCopyFile(t *testing.T) {
	h, root := newHandler(t)
	os.MkdirAll(root+"/cid", 0o755)
	plant(t, "FIFO", root+"/cid/resolv.conf"+TmpSuffix)
	for _, off := range []int64{0, 3} {
		start := time.Now()
		err := call(h, &pb.CopyFileRequest{Path: root + "/cid/resolv.conf", FileSize: 6, Offset: off, Data: []byte("abc"), FileMode: 0o644})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "path:") || !strings.Contains(err.Error(), "FIFO") {
			t.Fatalf("offset %d: %v, want PermissionDenied naming path and the FIFO", off, err)
		}
		// An open(2) of the FIFO would never return: 5 s, not 1 s (a CI
		// flake risk on a loaded machine), still catches it.
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("offset %d: refused after %v", off, d)
		}
	}
	// Another file is copied at once: nothing is wedged.
	if err := call(h, &pb.CopyFileRequest{Path: root + "/cid/hostname", FileSize: 2, Data: []byte("h\n"), FileMode: 0o644}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(root + "/cid/hostname"); string(b) != "h\n" {
		t.Fatalf("hostname %q", b)
	}
	// The FIFO is left as it was (never opened, never removed).
	if fi, err := os.Lstat(root + "/cid/resolv.conf" + TmpSuffix); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Fatalf("planted FIFO: %v %v", fi, err)
	}
}

// Every kind of non-regular entry, at the temporary or at the destination,
// is refused quickly with PermissionDenied naming its type, for the first
// and for a later chunk; nothing outside is touched and the entry stays.
func TestPlantedEntriesRefused(t *testing.T) {
	for _, kind := range []string{"FIFO", "socket", "character device", "symlink", "directory"} {
		for _, where := range []string{"tmp", "target"} {
			for _, off := range []int64{0, 2} {
				t.Run(kind+"/"+where+"/"+string(rune('0'+off)), func(t *testing.T) {
					h, root := newHandler(t)
					os.MkdirAll(root, 0o755)
					path := root + "/f"
					at := path
					if where == "tmp" {
						at += TmpSuffix
					}
					if where == "target" && off > 0 {
						// a transfer in progress when the entry appears
						if err := call(h, &pb.CopyFileRequest{Path: path, FileSize: 4, Data: []byte("ab")}); err != nil {
							t.Fatal(err)
						}
					}
					plant(t, kind, at)
					before, _ := os.Lstat(at)
					start := time.Now()
					err := call(h, &pb.CopyFileRequest{Path: path, FileSize: 4, Offset: off, Data: []byte("xy"), FileMode: 0o644})
					// A hang (open of a FIFO) never returns: 5 s, not 1 s
					// (a CI flake risk), still catches it.
					if d := time.Since(start); d > 5*time.Second {
						t.Errorf("took %v", d)
					}
					if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "path:") || !strings.Contains(err.Error(), kind) {
						t.Fatalf("%v, want PermissionDenied naming path and %q", err, kind)
					}
					after, err2 := os.Lstat(at)
					if err2 != nil || after.Mode() != before.Mode() || !os.SameFile(before, after) {
						t.Fatalf("planted %s changed: %v", kind, err2)
					}
					if b, err := os.ReadFile("/dev/null"); err != nil || len(b) != 0 {
						t.Fatal("/dev/null touched")
					}
				})
			}
		}
	}
}

// Issue 11 item 6: a directory request over an existing symlink was
// Internal ("not a directory"); it is PermissionDenied naming path.
func TestDirectoryOverSymlinkOrFIFO(t *testing.T) {
	for _, kind := range []string{"symlink", "FIFO", "socket"} {
		h, root := newHandler(t)
		os.MkdirAll(root, 0o755)
		plant(t, kind, root+"/d")
		err := call(h, &pb.CopyFileRequest{Path: root + "/d", FileMode: unix.S_IFDIR | 0o755})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "path:") || !strings.Contains(err.Error(), kind) {
			t.Fatalf("%s: %v, want PermissionDenied naming path and %q", kind, err, kind)
		}
	}
}

// Kata's runtime sends dir_mode as os.FileMode(0750)|os.ModeDir and
// file_mode as the source's st_mode, which may carry setuid, setgid and
// sticky bits; they must survive the chown.
func TestKataModes(t *testing.T) {
	h, root := newHandler(t)
	const goDirMode = 0x800001E8 // os.FileMode(0o750) | os.ModeDir
	if err := call(h, &pb.CopyFileRequest{Path: root + "/cid/bin/tool", FileSize: 2, Data: []byte("#!"),
		FileMode: unix.S_IFREG | unix.S_ISUID | unix.S_ISGID | 0o755, DirMode: goDirMode, Uid: 1000, Gid: 1000}); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	unix.Lstat(root+"/cid/bin/tool", &st)
	if st.Mode != unix.S_IFREG|unix.S_ISUID|unix.S_ISGID|0o755 || st.Uid != 1000 || st.Gid != 1000 {
		t.Fatalf("file mode %#o owner %d:%d, want setuid+setgid 0755 1000:1000", st.Mode, st.Uid, st.Gid)
	}
	for _, d := range []string{"/cid", "/cid/bin"} {
		unix.Lstat(root+d, &st)
		if st.Mode != unix.S_IFDIR|0o750 {
			t.Fatalf("parent %s mode %#o, want 0750", d, st.Mode)
		}
	}
	if err := call(h, &pb.CopyFileRequest{Path: root + "/cid/shared", FileMode: unix.S_IFDIR | unix.S_ISGID | unix.S_ISVTX | 0o775,
		DirMode: goDirMode, Uid: 1000, Gid: 1000}); err != nil {
		t.Fatal(err)
	}
	unix.Lstat(root+"/cid/shared", &st)
	if st.Mode != unix.S_IFDIR|unix.S_ISGID|unix.S_ISVTX|0o775 || st.Uid != 1000 {
		t.Fatalf("dir mode %#o uid %d", st.Mode, st.Uid)
	}
	for _, m := range []uint32{0o750, unix.S_IFDIR | 0o750, goDirMode, goDirMode | 1<<22 /* os.ModeSetgid */} {
		if p, err := DirPerm(m); err != nil || p != 0o750 {
			t.Errorf("DirPerm(%#x) = %#o, %v", m, p, err)
		}
	}
	for _, m := range []uint32{unix.S_IFREG | 0o755, 1<<27 | 0o755 /* os.ModeSymlink */, goDirMode | unix.S_IFDIR, 1 << 20} {
		if _, err := DirPerm(m); err == nil {
			t.Errorf("DirPerm(%#x) accepted", m)
		}
	}
}

// Issue 10 item 4: a failed copy removes its temporary.
func TestFailedCopyRemovesTmp(t *testing.T) {
	h, root := newHandler(t)
	path := root + "/f"
	start := func() {
		t.Helper()
		if err := call(h, &pb.CopyFileRequest{Path: path, FileSize: 6, Data: []byte("abc")}); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(path + TmpSuffix); err != nil {
			t.Fatal("no temporary during the transfer")
		}
	}
	failures := []struct {
		name string
		req  *pb.CopyFileRequest
		prep func()
	}{
		{"chunk overruns file_size", &pb.CopyFileRequest{Path: path, FileSize: 6, Offset: 3, Data: []byte("defg")}, nil},
		{"hole", &pb.CopyFileRequest{Path: path, FileSize: 6, Offset: 4, Data: []byte("ef")}, nil},
		{"target became a directory", &pb.CopyFileRequest{Path: path, FileSize: 6, Offset: 3, Data: []byte("def")},
			func() { os.Mkdir(path, 0o755) }},
	}
	for _, f := range failures {
		t.Run(f.name, func(t *testing.T) {
			os.RemoveAll(path)
			start()
			if f.prep != nil {
				f.prep()
			}
			if err := call(h, f.req); err == nil {
				t.Fatalf("%s did not fail", f.name)
			}
			if _, err := os.Lstat(path + TmpSuffix); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("temporary left after the failure: %v", err)
			}
		})
	}
}

// Requests for one path wait for each other, with their deadline; other
// paths never wait.
func TestPathLockHonoursDeadline(t *testing.T) {
	h, root := newHandler(t)
	unlock, err := h.Copier.locks.lock(context.Background(), root+"/busy")
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if err := call(h, &pb.CopyFileRequest{Path: root + "/other", FileSize: 1, Data: []byte("x")}); err != nil {
		t.Fatalf("other path waited: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = h.CopyFile(ctx, &pb.CopyFileRequest{Path: root + "/busy", FileSize: 1, Data: []byte("x")})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("busy path: %v, want DeadlineExceeded", err)
	}
}

// Found by FuzzCopy: a parent component that is a dangling symlink (made by
// an earlier symlink request) was Internal; it is PermissionDenied naming
// path.
func TestDanglingSymlinkParent(t *testing.T) {
	h, root := newHandler(t)
	if err := call(h, &pb.CopyFileRequest{Path: root + "/0", FileMode: unix.S_IFLNK | 0o777, Data: []byte("missing")}); err != nil {
		t.Fatal(err)
	}
	err := call(h, &pb.CopyFileRequest{Path: root + "/0/0", FileMode: 0o600, DirMode: 0x4175, FileSize: 2, Data: []byte("z")})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "path:") || !strings.Contains(err.Error(), "dangling symlink") {
		t.Fatalf("%v, want PermissionDenied naming the dangling symlink", err)
	}
}
