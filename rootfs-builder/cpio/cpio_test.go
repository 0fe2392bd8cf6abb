package cpio

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// newcHeader builds the expected header bytes independently of the writer.
func newcHeader(ino, mode, nlink, mtime, size, rmaj, rmin uint32, name string) string {
	s := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, mtime, size, 0, 0, rmaj, rmin, len(name)+1, 0) + name + "\x00"
	for len(s)%4 != 0 {
		s += "\x00"
	}
	return s
}

func pad4(s string) string {
	for len(s)%4 != 0 {
		s += "\x00"
	}
	return s
}

func TestWriteEntriesExactBytes(t *testing.T) {
	entries := []Entry{
		Symlink("init", "sbin/init"),
		CharDev("/dev/console", 0o600, 5, 1),
		Bytes("sbin/init", []byte("hello"), 0o755),
	}
	var buf bytes.Buffer
	if err := WriteEntries(&buf, entries, Options{MTime: 1700000000}); err != nil {
		t.Fatal(err)
	}
	const mt = 1700000000
	want := newcHeader(1, 0o40755, 2, mt, 0, 0, 0, "dev") +
		newcHeader(2, 0o20600, 1, mt, 0, 5, 1, "dev/console") +
		newcHeader(3, 0o120777, 1, mt, 9, 0, 0, "init") + pad4("sbin/init") +
		newcHeader(4, 0o40755, 2, mt, 0, 0, 0, "sbin") +
		newcHeader(5, 0o100755, 1, mt, 5, 0, 0, "sbin/init") + pad4("hello") +
		newcHeader(0, 0, 1, mt, 0, 0, 0, "TRAILER!!!")
	for len(want)%512 != 0 {
		want += "\x00"
	}
	if got := buf.String(); got != want {
		t.Fatalf("archive mismatch\n got %q\nwant %q", got, want)
	}
}

// makeTree builds a small tree with every supported file type.
func makeTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "lib/modules/6.1"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "a-b"), 0o700))
	must(os.WriteFile(filepath.Join(root, "lib/modules/6.1/x.ko"), bytes.Repeat([]byte{1, 2, 3}, 1001), 0o644))
	must(os.WriteFile(filepath.Join(root, "a-b/suid"), []byte("s"), 0o755))
	must(os.Chmod(filepath.Join(root, "a-b/suid"), 0o755|fs.ModeSetuid))
	must(os.Symlink("lib/modules", filepath.Join(root, "mods")))
	must(os.Link(filepath.Join(root, "a-b/suid"), filepath.Join(root, "hardlink")))
	return root
}

func TestWriteTreeRoundTrip(t *testing.T) {
	root := makeTree(t)
	var buf bytes.Buffer
	if err := WriteTree(&buf, root, Options{MTime: 42}); err != nil {
		t.Fatal(err)
	}
	r := NewReader(bytes.NewReader(buf.Bytes()))
	var names []string
	seenIno := map[uint32]bool{}
	var linkIno []uint32
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.UID != 0 || h.GID != 0 || h.MTime != 42 {
			t.Errorf("%s: uid/gid/mtime = %d/%d/%d, want 0/0/42", h.Name, h.UID, h.GID, h.MTime)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		// a-b/suid and hardlink are one hard-link group: one inode, nlink
		// 2, the data in the last member (as GNU cpio writes newc).
		if h.Name == "a-b/suid" || h.Name == "hardlink" {
			linkIno = append(linkIno, h.Ino)
			if h.Nlink != 2 || h.Mode != 0o104755 {
				t.Errorf("%s: nlink %d mode %o, want 2 and 104755", h.Name, h.Nlink, h.Mode)
			}
			want := map[string]string{"a-b/suid": "", "hardlink": "s"}[h.Name]
			if string(data) != want {
				t.Errorf("%s: data %q, want %q", h.Name, data, want)
			}
			continue
		}
		if seenIno[h.Ino] {
			t.Errorf("%s: inode %d reused", h.Name, h.Ino)
		}
		seenIno[h.Ino] = true
		if h.Mode&0o170000 == 0o100000 && h.Nlink != 1 {
			t.Errorf("%s: nlink %d, want 1", h.Name, h.Nlink)
		}
		switch h.Name {
		case "mods":
			if string(data) != "lib/modules" {
				t.Errorf("symlink target %q", data)
			}
		case "lib/modules/6.1/x.ko":
			if len(data) != 3003 {
				t.Errorf("x.ko: %d bytes", len(data))
			}
		case "a-b":
			if h.Mode != 0o40700 {
				t.Errorf("a-b mode %o", h.Mode)
			}
		}
	}
	if len(linkIno) != 2 || linkIno[0] != linkIno[1] || seenIno[linkIno[0]] {
		t.Errorf("hard-link group inodes %v (others %v)", linkIno, seenIno)
	}
	want := "a-b a-b/suid hardlink lib lib/modules lib/modules/6.1 lib/modules/6.1/x.ko mods"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("order:\n got %s\nwant %s", got, want)
	}
}

// TestGNUCpioExtracts checks interoperability with GNU cpio, the reference
// newc implementation, when it is installed.
func TestGNUCpioExtracts(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio not installed")
	}
	root := makeTree(t)
	var buf bytes.Buffer
	if err := WriteTree(&buf, root, Options{}); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cmd := exec.Command("cpio", "-id", "--quiet", "--no-absolute-filenames")
	cmd.Dir = out
	cmd.Stdin = &buf
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -id: %v: %s", err, b)
	}
	got, err := os.ReadFile(filepath.Join(out, "lib/modules/6.1/x.ko"))
	if err != nil || len(got) != 3003 {
		t.Fatalf("extracted x.ko: %d bytes, %v", len(got), err)
	}
	if l, err := os.Readlink(filepath.Join(out, "mods")); err != nil || l != "lib/modules" {
		t.Fatalf("extracted symlink: %q %v", l, err)
	}
	// The hard-link group comes back as one inode with its content.
	a, errA := os.Stat(filepath.Join(out, "a-b/suid"))
	b, errB := os.Stat(filepath.Join(out, "hardlink"))
	if errA != nil || errB != nil || !os.SameFile(a, b) {
		t.Fatalf("hard link not restored: %v %v", errA, errB)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "hardlink")); string(got) != "s" {
		t.Fatalf("hard link content %q", got)
	}
}

// TestTreeOwnersTimesAndXattrs: owners and older mtimes are kept, newer
// ones clamped, and a tree with xattrs is refused naming the file.
func TestTreeOwnersTimesAndXattrs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	root := t.TempDir()
	p := filepath.Join(root, "shadow")
	os.WriteFile(p, []byte("x"), 0o640)
	os.Chown(p, 0, 42)
	os.Chtimes(p, time.Unix(1000, 0), time.Unix(1000, 0))
	os.WriteFile(filepath.Join(root, "new"), []byte("y"), 0o644)
	var buf bytes.Buffer
	if err := WriteTree(&buf, root, Options{MTime: 5000}); err != nil {
		t.Fatal(err)
	}
	r := NewReader(&buf)
	got := map[string]*Header{}
	for {
		h, err := r.Next()
		if err != nil {
			break
		}
		got[h.Name] = h
	}
	if h := got["shadow"]; h == nil || h.GID != 42 || h.MTime != 1000 {
		t.Fatalf("shadow header %+v, want gid 42 mtime 1000", h)
	}
	if h := got["new"]; h == nil || h.MTime != 5000 {
		t.Fatalf("new header %+v, want mtime clamped to 5000", h)
	}
	if err := unix.Lsetxattr(p, "user.keel", []byte("v"), 0); err != nil {
		t.Fatalf("setxattr: %v", err)
	}
	_, err := TreeEntries(root)
	if err == nil || !strings.Contains(err.Error(), "/shadow has extended attributes (user.keel)") {
		t.Fatalf("tree with xattrs: %v", err)
	}
}

func sha(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

func TestBuildInitrdReproducible(t *testing.T) {
	root := makeTree(t)
	entries, err := TreeEntries(root)
	if err != nil {
		t.Fatal(err)
	}
	entries = append(entries, CharDev("dev/console", 0o600, 5, 1))
	for _, c := range []Compression{None, Gzip, Zstd} {
		t.Run(string(c), func(t *testing.T) {
			if c == Zstd {
				if _, err := exec.LookPath("zstd"); err != nil {
					t.Skip("zstd not installed")
				}
			}
			dir := t.TempDir()
			a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
			if err := BuildInitrd(a, entries, c, Options{MTime: 1}); err != nil {
				t.Fatal(err)
			}
			// Touch the sources: host mtimes must not leak into the archive.
			os.Chtimes(filepath.Join(root, "a-b/suid"), time0, time0)
			if err := BuildInitrd(b, entries, c, Options{MTime: 1}); err != nil {
				t.Fatal(err)
			}
			if sha(t, a) != sha(t, b) {
				t.Fatal("two builds differ")
			}
			data, _ := os.ReadFile(a)
			magic := map[Compression]string{None: "070701", Gzip: "\x1f\x8b", Zstd: "\x28\xb5\x2f\xfd"}[c]
			if !strings.HasPrefix(string(data), magic) {
				t.Fatalf("missing %s magic: % x", c, data[:4])
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 2 {
				t.Fatalf("leftover files: %v", ents)
			}
		})
	}
}

func TestBuildInitrdErrorsLeaveNothing(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name    string
		out     string
		entries []Entry
		want    string
	}{
		{"escape", filepath.Join(dir, "x.img"), []Entry{Bytes("../etc/passwd", nil, 0o644)}, `contains ".."`},
		{"duplicate", filepath.Join(dir, "x.img"), []Entry{Bytes("a", nil, 0o644), Symlink("a", "b")}, "duplicate entry"},
		{"under file", filepath.Join(dir, "x.img"), []Entry{Bytes("a", nil, 0o644), Bytes("a/b", nil, 0o644)}, "not a directory"},
		{"missing source", filepath.Join(dir, "x.img"), []Entry{File("a", filepath.Join(dir, "nope"), 0o644)}, "no such file"},
		{"root", filepath.Join(dir, "x.img"), []Entry{Dir("/", 0o755)}, "archive root"},
		{"no dir", filepath.Join(dir, "missing/x.img"), nil, "unable to create"},
		{"symlink no target", filepath.Join(dir, "x.img"), []Entry{{Path: "l", Mode: fs.ModeSymlink}}, "without target"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := BuildInitrd(tc.out, tc.entries, Gzip, Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if _, err := os.Stat(tc.out); !os.IsNotExist(err) {
				t.Fatalf("%s exists after failure", tc.out)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Fatalf("leftover files: %v", ents)
			}
		})
	}
}

func TestSourceDateEpoch(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1234")
	if v, err := SourceDateEpoch(); err != nil || v != 1234 {
		t.Fatalf("got %d %v", v, err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	if _, err := SourceDateEpoch(); err == nil || !strings.Contains(err.Error(), "invalid SOURCE_DATE_EPOCH") {
		t.Fatalf("err = %v", err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "")
	if v, err := SourceDateEpoch(); err != nil || v != 0 {
		t.Fatalf("got %d %v", v, err)
	}
}
