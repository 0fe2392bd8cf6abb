package copyfile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/keelvm/keel/protocol/grpc"
)

func newHandler(t *testing.T) (*Handler, string) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "shared", "containers")
	return &Handler{Copier: Copier{Root: root}}, root
}

// call runs one CopyFile with a deadline: a request that blocks (a FIFO
// opened for writing) fails the test instead of hanging it.
func call(h *Handler, r *pb.CopyFileRequest) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := h.CopyFile(ctx, r)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(15 * time.Second):
		panic(fmt.Sprintf("CopyFile %q blocked for 15 s", r.GetPath()))
	}
}

func TestChunkedFile(t *testing.T) {
	h, root := newHandler(t)
	data := make([]byte, 3<<20+123)
	rand.NewChaCha8([32]byte{1}).Read(data)
	path := root + "/cid/rootfs/etc/big"
	for off := 0; off < len(data); off += 1 << 20 {
		end := min(off+1<<20, len(data))
		if _, err := os.Stat(path); err == nil {
			t.Fatal("destination visible before the last chunk")
		}
		err := call(h, &pb.CopyFileRequest{Path: path, FileSize: int64(len(data)), FileMode: unix.S_IFREG | 0o640,
			DirMode: 0o750, Uid: 1000, Gid: 2000, Offset: int64(off), Data: data[off:end]})
		if err != nil {
			t.Fatalf("chunk at %d: %v", off, err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil || sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("content differs (%d bytes, %v)", len(got), err)
	}
	var st unix.Stat_t
	unix.Lstat(path, &st)
	if st.Mode != unix.S_IFREG|0o640 || st.Uid != 1000 || st.Gid != 2000 {
		t.Fatalf("mode %#o uid %d gid %d", st.Mode, st.Uid, st.Gid)
	}
	unix.Lstat(root+"/cid/rootfs", &st)
	if st.Mode&0o7777 != 0o750 {
		t.Fatalf("created parent mode %#o, want 0750", st.Mode&0o7777)
	}
	if _, err := os.Lstat(path + TmpSuffix); !os.IsNotExist(err) {
		t.Fatal("temporary left behind")
	}
}

func TestRetransferRestartsAtOffsetZero(t *testing.T) {
	h, root := newHandler(t)
	path := root + "/f"
	// An abandoned transfer left a longer partial file.
	call(h, &pb.CopyFileRequest{Path: path, FileSize: 10, Data: []byte("0123456")})
	if err := call(h, &pb.CopyFileRequest{Path: path, FileSize: 3, FileMode: 0o644, Data: []byte("abc"), Uid: -1, Gid: -1}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "abc" {
		t.Fatalf("got %q", b)
	}
}

func TestEmptyFileDirAndSymlink(t *testing.T) {
	h, root := newHandler(t)
	if err := call(h, &pb.CopyFileRequest{Path: root + "/empty", FileMode: 0o600}); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(root + "/empty"); err != nil || st.Size() != 0 {
		t.Fatalf("empty file: %v", err)
	}
	for i := 0; i < 2; i++ { // existing directory is fine
		if err := call(h, &pb.CopyFileRequest{Path: root + "/d/sub", FileMode: unix.S_IFDIR | 0o711, Uid: 7, Gid: 8}); err != nil {
			t.Fatal(err)
		}
	}
	var st unix.Stat_t
	unix.Lstat(root+"/d/sub", &st)
	if st.Mode != unix.S_IFDIR|0o711 || st.Uid != 7 || st.Gid != 8 {
		t.Fatalf("dir mode %#o uid %d gid %d", st.Mode, st.Uid, st.Gid)
	}
	for _, target := range []string{"../d/sub", "/etc/hostname"} { // replaced on the second call
		if err := call(h, &pb.CopyFileRequest{Path: root + "/link", FileMode: unix.S_IFLNK | 0o777, Data: []byte(target), Uid: 5, Gid: 6}); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.Readlink(root + "/link"); got != target {
			t.Fatalf("link -> %q, want %q", got, target)
		}
	}
	unix.Lstat(root+"/link", &st)
	if st.Uid != 5 || st.Gid != 6 {
		t.Fatalf("link owner %d:%d", st.Uid, st.Gid)
	}
}

func TestBadInput(t *testing.T) {
	h, root := newHandler(t)
	ok := func(r *pb.CopyFileRequest) *pb.CopyFileRequest {
		if r.Path == "" {
			r.Path = root + "/f"
		}
		return r
	}
	cases := []struct {
		name  string
		req   *pb.CopyFileRequest
		code  codes.Code
		field string
	}{
		{"empty path", &pb.CopyFileRequest{Path: ""}, codes.InvalidArgument, "path"},
		{"relative", &pb.CopyFileRequest{Path: "f"}, codes.InvalidArgument, "path"},
		{"dotdot", &pb.CopyFileRequest{Path: root + "/../x"}, codes.InvalidArgument, "path"},
		{"dotdot escaping", &pb.CopyFileRequest{Path: root + "/a/../../x"}, codes.InvalidArgument, "path"},
		{"dot", &pb.CopyFileRequest{Path: root + "/./f"}, codes.InvalidArgument, "path"},
		{"double slash", &pb.CopyFileRequest{Path: root + "//f"}, codes.InvalidArgument, "path"},
		{"trailing slash", &pb.CopyFileRequest{Path: root + "/f/"}, codes.InvalidArgument, "path"},
		{"root itself", &pb.CopyFileRequest{Path: root}, codes.InvalidArgument, "path"},
		{"sibling prefix", &pb.CopyFileRequest{Path: root + "x/f"}, codes.InvalidArgument, "path"},
		{"outside", &pb.CopyFileRequest{Path: "/etc/passwd"}, codes.InvalidArgument, "path"},
		{"nul", &pb.CopyFileRequest{Path: root + "/a\x00b"}, codes.InvalidArgument, "path"},
		{"long name", &pb.CopyFileRequest{Path: root + "/" + strings.Repeat("n", 252)}, codes.InvalidArgument, "path"},
		{"long path", &pb.CopyFileRequest{Path: root + strings.Repeat("/n", MaxPathLen/2)}, codes.InvalidArgument, "path"},
		{"negative size", ok(&pb.CopyFileRequest{FileSize: -1}), codes.InvalidArgument, "file_size"},
		{"negative offset", ok(&pb.CopyFileRequest{FileSize: 5, Offset: -1}), codes.InvalidArgument, "offset"},
		{"offset past size", ok(&pb.CopyFileRequest{FileSize: 5, Offset: 6}), codes.InvalidArgument, "offset"},
		{"data overruns size", ok(&pb.CopyFileRequest{FileSize: 5, Offset: 3, Data: []byte("abc")}), codes.InvalidArgument, "data"},
		{"chunk too big", ok(&pb.CopyFileRequest{FileSize: MaxChunkLen + 1, Data: make([]byte, MaxChunkLen+1)}), codes.InvalidArgument, "data"},
		{"socket type", ok(&pb.CopyFileRequest{FileMode: unix.S_IFSOCK | 0o644}), codes.InvalidArgument, "file_mode"},
		{"fifo type", ok(&pb.CopyFileRequest{FileMode: unix.S_IFIFO | 0o644}), codes.InvalidArgument, "file_mode"},
		{"unknown mode bits", ok(&pb.CopyFileRequest{FileMode: 1 << 20}), codes.InvalidArgument, "file_mode"},
		{"dir_mode bits", ok(&pb.CopyFileRequest{DirMode: unix.S_IFREG | 0o755}), codes.InvalidArgument, "dir_mode"},
		{"uid", ok(&pb.CopyFileRequest{Uid: -2}), codes.InvalidArgument, "uid"},
		{"gid", ok(&pb.CopyFileRequest{Gid: -5}), codes.InvalidArgument, "gid"},
		{"dir with data", ok(&pb.CopyFileRequest{FileMode: unix.S_IFDIR | 0o755, Data: []byte("x")}), codes.InvalidArgument, "data"},
		{"symlink no target", ok(&pb.CopyFileRequest{FileMode: unix.S_IFLNK | 0o777}), codes.InvalidArgument, "data"},
		{"symlink nul", ok(&pb.CopyFileRequest{FileMode: unix.S_IFLNK | 0o777, Data: []byte("a\x00")}), codes.InvalidArgument, "data"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := call(h, c.req)
			st, _ := status.FromError(err)
			if st.Code() != c.code || !strings.Contains(st.Message(), c.field+":") {
				t.Fatalf("got %v, want %v naming %q", err, c.code, c.field)
			}
		})
	}
	if err := call(h, nil); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("nil request: %v", err)
	}
	// Nothing was created by any of them.
	ents, _ := os.ReadDir(root)
	if len(ents) != 0 {
		t.Fatalf("bad requests left %d entries", len(ents))
	}
}

func TestHoleRefused(t *testing.T) {
	h, root := newHandler(t)
	if err := call(h, &pb.CopyFileRequest{Path: root + "/f", FileSize: 10, Data: []byte("abc")}); err != nil {
		t.Fatal(err)
	}
	err := call(h, &pb.CopyFileRequest{Path: root + "/f", FileSize: 10, Offset: 5, Data: []byte("xyz")})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "offset:") {
		t.Fatalf("hole: %v", err)
	}
	// The refused chunk ended the transfer: its temporary is gone and a
	// later chunk must restart at 0.
	if _, err := os.Lstat(root + "/f" + TmpSuffix); !os.IsNotExist(err) {
		t.Fatalf("temporary kept after a refused chunk: %v", err)
	}
	if err := call(h, &pb.CopyFileRequest{Path: root + "/f", FileSize: 10, Offset: 1, Data: []byte("bc")}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("chunk after an abandoned transfer: %v", err)
	}
	// Repeating a range is fine (a retried chunk).
	for _, c := range []struct {
		off  int64
		data string
	}{{0, "abc"}, {1, "bc"}, {3, "defghij"}} {
		if err := call(h, &pb.CopyFileRequest{Path: root + "/f", FileSize: 10, Offset: c.off, Data: []byte(c.data)}); err != nil {
			t.Fatal(err)
		}
	}
	if b, _ := os.ReadFile(root + "/f"); string(b) != "abcdefghij" {
		t.Fatalf("got %q", b)
	}
}

// Symlinks already in the tree must not lead the agent outside the root.
func TestSymlinkEscapesRefused(t *testing.T) {
	h, root := newHandler(t)
	outside := filepath.Join(filepath.Dir(root), "outside")
	os.MkdirAll(outside, 0o755)
	os.MkdirAll(root, 0o755)
	os.WriteFile(outside+"/victim", []byte("keep"), 0o644)
	os.Symlink(outside, root+"/abs")             // absolute
	os.Symlink("../outside", root+"/rel")        // relative, escaping
	os.Symlink(outside+"/victim", root+"/f.tmp") // a planted temporary
	os.Mkdir(root+"/in", 0o755)
	os.Symlink("in", root+"/ok") // relative, inside: followed
	for _, p := range []string{root + "/abs/x", root + "/rel/x", root + "/abs/new/x", root + "/f"} {
		err := call(h, &pb.CopyFileRequest{Path: p, FileSize: 1, Data: []byte("!")})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "path:") {
			t.Errorf("%s: %v, want PermissionDenied naming path", p, err)
		}
	}
	if err := call(h, &pb.CopyFileRequest{Path: root + "/ok/x", FileSize: 1, Data: []byte("!")}); err != nil {
		t.Fatalf("inside symlink: %v", err)
	}
	if b, _ := os.ReadFile(root + "/in/x"); string(b) != "!" {
		t.Fatal("write through an inside symlink missing")
	}
	ents, _ := os.ReadDir(outside)
	if b, _ := os.ReadFile(outside + "/victim"); len(ents) != 1 || !bytes.Equal(b, []byte("keep")) {
		t.Fatalf("outside touched: %d entries, victim %q", len(ents), b)
	}
	// A final component that is a symlink is neither followed nor replaced
	// by a file or directory request.
	os.Symlink(outside+"/victim", root+"/final")
	for _, mode := range []uint32{unix.S_IFREG | 0o644, unix.S_IFDIR | 0o755} {
		err := call(h, &pb.CopyFileRequest{Path: root + "/final", FileSize: 3, FileMode: mode, Data: []byte("new")[:3*btoi(mode&unix.S_IFREG != 0)]})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "path:") || !strings.Contains(err.Error(), "symlink") {
			t.Errorf("mode %#o over a symlink: %v, want PermissionDenied naming path and the symlink", mode, err)
		}
	}
	if b, _ := os.ReadFile(outside + "/victim"); string(b) != "keep" {
		t.Fatal("followed the final symlink")
	}
	if l, _ := os.Readlink(root + "/final"); l != outside+"/victim" {
		t.Fatalf("final symlink changed to %q", l)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func FuzzValidatePath(f *testing.F) {
	const root = "/run/kata-containers/shared/containers"
	for _, s := range []string{root + "/a", root, root + "/", root + "/../a", root + "x/a", "/", "", "a/b",
		root + "/a/./b", root + "//a", root + "/a/..", root + "/..a", root + "/a\x00", root + "/.../x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		comps, err := ValidatePath(root, p)
		if err != nil {
			return
		}
		if filepath.Clean(p) != p || !strings.HasPrefix(p, root+"/") {
			t.Fatalf("accepted %q", p)
		}
		if filepath.Join(append([]string{root}, comps...)...) != p {
			t.Fatalf("components %q do not rebuild %q", comps, p)
		}
		for _, c := range comps {
			if c == ".." || c == "." || c == "" || strings.ContainsAny(c, "/\x00") {
				t.Fatalf("accepted component %q in %q", c, p)
			}
		}
	})
}

func TestConcurrentTransfers(t *testing.T) {
	h, root := newHandler(t)
	const files, size, chunk = 8, 256 << 10, 32 << 10
	errs := make(chan error, files)
	for i := 0; i < files; i++ {
		go func() {
			data := bytes.Repeat([]byte{byte(i)}, size)
			for off := 0; off < size; off += chunk {
				if err := call(h, &pb.CopyFileRequest{Path: filepath.Join(root, "c", string(rune('a'+i))),
					FileSize: size, FileMode: 0o644, Offset: int64(off), Data: data[off : off+chunk]}); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for i := 0; i < files; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < files; i++ {
		b, err := os.ReadFile(filepath.Join(root, "c", string(rune('a'+i))))
		if err != nil || !bytes.Equal(b, bytes.Repeat([]byte{byte(i)}, size)) {
			t.Fatalf("file %d: %d bytes, %v", i, len(b), err)
		}
	}
}

// FuzzCopy runs whole requests through the handler against a real
// directory that holds planted FIFOs, symlinks and a directory: whatever the
// request, it must not panic, block, answer Internal for a request the
// host could have sent by mistake, or touch anything outside the root.
func FuzzCopy(f *testing.F) {
	for _, s := range []struct {
		rel           string
		mode, dirMode uint32
		size, off     int64
		data          []byte
	}{
		{"cid/f", unix.S_IFREG | 0o644, 0o750, 3, 0, []byte("abc")},
		{"cid/f", unix.S_IFREG | 0o4755, 0x800001E8, 6, 3, []byte("def")},
		{"fifo", unix.S_IFREG | 0o644, 0o750, 1, 0, []byte("x")},
		{"plain", unix.S_IFREG | 0o644, 0o750, 1, 0, []byte("x")},
		{"esc/x", unix.S_IFREG | 0o644, 0o750, 1, 0, []byte("x")},
		{"dir", unix.S_IFLNK | 0o777, 0o750, 0, 0, []byte("../../outside")},
		{"link", unix.S_IFDIR | 0o2775, 0x800001E8, 0, 0, nil},
		{"dir/sub/f", 0o600, unix.S_IFDIR | 0o700, 2, 1, []byte("z")},
	} {
		f.Add(s.rel, s.mode, s.dirMode, s.size, s.off, s.data, int32(-1), int32(0))
	}
	base := f.TempDir()
	root := filepath.Join(base, "root")
	outside := filepath.Join(base, "outside")
	os.MkdirAll(root+"/dir", 0o755)
	os.MkdirAll(outside, 0o755)
	os.WriteFile(outside+"/victim", []byte("keep"), 0o644)
	unix.Mkfifo(root+"/fifo.tmp", 0o644)
	unix.Mkfifo(outside+"/fifo", 0o644)
	os.Symlink("../outside", root+"/esc")
	os.WriteFile(root+"/plain", nil, 0o644)
	os.Symlink("plain", root+"/link.tmp")
	h := &Handler{Copier: Copier{Root: root}}
	allowed := map[codes.Code]bool{codes.OK: true, codes.InvalidArgument: true, codes.PermissionDenied: true, codes.FailedPrecondition: true}
	f.Fuzz(func(t *testing.T, rel string, mode, dirMode uint32, size, off int64, data []byte, uid, gid int32) {
		err := call(h, &pb.CopyFileRequest{Path: root + "/" + rel, FileMode: mode, DirMode: dirMode,
			FileSize: size, Offset: off, Data: data, Uid: uid, Gid: gid})
		if c := status.Code(err); !allowed[c] {
			t.Fatalf("%q mode %#o dir_mode %#x size %d off %d: %v", rel, mode, dirMode, size, off, err)
		}
		ents, _ := os.ReadDir(outside)
		if b, _ := os.ReadFile(outside + "/victim"); len(ents) != 2 || string(b) != "keep" {
			t.Fatalf("%q: outside touched", rel)
		}
		if _, err := os.Lstat(filepath.Join(base, "root.tmp")); err == nil {
			t.Fatalf("%q: wrote beside the root", rel)
		}
	})
}
