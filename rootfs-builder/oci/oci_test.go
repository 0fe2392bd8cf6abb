package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keelvm/keel/rootfs-builder/internal/ocitest"
)

type ent struct {
	name, link string
	typ        byte
	body       string
	mode       int64
}

func layerTar(t testing.TB, ents ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.body))}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func file(name, body string) ent { return ent{name: name, typ: tar.TypeReg, body: body} }
func dir(name string) ent        { return ent{name: name, typ: tar.TypeDir, mode: 0o755} }

// listTree returns "path" for dirs/files and "path -> target" for links.
func listTree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case info.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			rel += " -> " + l
		case info.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			rel += "=" + string(b)
		}
		out = append(out, rel)
		return nil
	})
	sort.Strings(out)
	return out
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

// writeLayout creates an OCI image layout with the given (uncompressed)
// layers, stored gzip-compressed.
func writeLayout(t *testing.T, layers ...[]byte) string {
	t.Helper()
	d := t.TempDir()
	if _, err := ocitest.WriteLayout(d, ocitest.Image{Layers: layers, Gzip: true}); err != nil {
		t.Fatal(err)
	}
	return d
}

func baseLayers(t *testing.T) [][]byte {
	l1 := layerTar(t,
		dir("etc/"), file("etc/keep", "1"), file("etc/gone", "x"),
		dir("var/lib/"), file("var/lib/old", "lower"), dir("var/lib/sub/"), file("var/lib/sub/deep", "lower"),
		ent{name: "usr/bin/sh", typ: tar.TypeSymlink, link: "/bin/busybox"},
		ent{name: "usr/lib/rel", typ: tar.TypeSymlink, link: "../bin/sh"},
		file("usr/bin/busybox", "bb"),
		ent{name: "usr/bin/hard", typ: tar.TypeLink, link: "usr/bin/busybox"},
	)
	l2 := layerTar(t,
		file("etc/.wh.gone", ""),
		file("var/lib/new", "upper"),
		file("var/lib/implicit/x", "upper"),
		file("var/lib/.wh..wh..opq", ""),
		// aufs metadata from old docker layers: skipped, not content.
		dir(".wh..wh.plnk/"), file(".wh..wh.plnk/1.2", "x"), file("etc/.wh..wh.aufs", ""),
		dir("var/lib/sub/"), file("var/lib/sub/fresh", "upper"),
		file("etc/keep", "2"),
	)
	return [][]byte{l1, l2}
}

func TestUnpackLayoutWhiteoutsAndOpaque(t *testing.T) {
	layout := writeLayout(t, baseLayers(t)...)
	img, err := Open(layout, Platform{})
	if err != nil {
		t.Fatal(err)
	}
	if img.Format != "oci-layout" || len(img.Layers) != 2 {
		t.Fatalf("format %s layers %d", img.Format, len(img.Layers))
	}
	out := t.TempDir()
	if err := img.Unpack(out, ApplyOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"etc", "etc/keep=2",
		"usr", "usr/bin", "usr/bin/busybox=bb", "usr/bin/hard=bb", "usr/bin/sh -> /bin/busybox",
		"usr/lib", "usr/lib/rel -> ../bin/sh",
		"var", "var/lib", "var/lib/implicit", "var/lib/implicit/x=upper", "var/lib/new=upper", "var/lib/sub", "var/lib/sub/fresh=upper",
	}
	if got := listTree(t, out); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("tree:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	a, _ := os.Stat(filepath.Join(out, "usr/bin/busybox"))
	b, _ := os.Stat(filepath.Join(out, "usr/bin/hard"))
	if !os.SameFile(a, b) {
		t.Error("hard link not preserved")
	}
}

func TestDockerSaveTarball(t *testing.T) {
	p := filepath.Join(t.TempDir(), "img.tar")
	if _, err := ocitest.WriteDockerSave(p, ocitest.Image{Layers: baseLayers(t)}, nil); err != nil {
		t.Fatal(err)
	}
	img, err := Open(p, Platform{})
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if err := img.Unpack(out, ApplyOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	if img.Format != "docker-save" {
		t.Fatalf("format %s", img.Format)
	}
	if b, err := os.ReadFile(filepath.Join(out, "var/lib/sub/fresh")); err != nil || string(b) != "upper" {
		t.Fatalf("fresh: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(out, "var/lib/old")); !os.IsNotExist(err) {
		t.Fatal("opaque dir kept a lower-layer file")
	}
}

func TestDigestMismatch(t *testing.T) {
	layout := writeLayout(t, layerTar(t, file("a", "b")))
	img, err := Open(layout, Platform{})
	if err != nil {
		t.Fatal(err)
	}
	blob := filepath.Join(layout, img.Layers[0].Name)
	os.WriteFile(blob, gz(layerTar(t, file("a", "c"))), 0o644)
	if err := img.Unpack(t.TempDir(), ApplyOptions{}, nil); err == nil || !strings.Contains(err.Error(), "digest mismatch") {
		t.Fatalf("err = %v", err)
	}
}

// TestEscapes checks that hostile layers fail and write nothing outside.
func TestEscapes(t *testing.T) {
	cases := []struct {
		name string
		ents []ent
		want string
	}{
		{"dotdot file", []ent{file("../evil", "x")}, `contains ".."`},
		{"nested dotdot", []ent{file("a/../../evil", "x")}, `contains ".."`},
		{"escaping symlink", []ent{{name: "a/l", typ: tar.TypeSymlink, link: "../../evil"}}, "escapes the root"},
		{"write through absolute symlink", []ent{{name: "l", typ: tar.TypeSymlink, link: "/tmp"}, file("l/evil", "x")}, "escapes"},
		{"write through escaping dir symlink", []ent{{name: "d", typ: tar.TypeSymlink, link: "."}, {name: "d/x", typ: tar.TypeSymlink, link: "/"}, file("d/x/evil", "x")}, "escapes"},
		{"absolute hardlink", []ent{{name: "h", typ: tar.TypeLink, link: "/etc/passwd"}}, "is absolute"},
		{"escaping hardlink", []ent{{name: "h", typ: tar.TypeLink, link: "../etc/passwd"}}, "escapes the root"},
		{"hardlink via symlink", []ent{{name: "l", typ: tar.TypeSymlink, link: "/etc"}, {name: "h", typ: tar.TypeLink, link: "l/passwd"}}, "escapes"},
		{"device as non-root", []ent{{name: "dev/sda", typ: tar.TypeBlock}}, "device node"},
		{"whiteout dotdot", []ent{file("a/keep", "x"), file("a/.wh...", "")}, `whiteout names ".."`},
		{"whiteout dot", []ent{file("a/.wh..", "")}, `whiteout names "."`},
		{"whiteout empty", []ent{file("a/.wh.", "")}, `whiteout names ""`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			parent := t.TempDir()
			root := filepath.Join(parent, "root")
			os.Mkdir(root, 0o755)
			err := ApplyLayer(root, bytes.NewReader(layerTar(t, c.ents...)), ApplyOptions{AllowDevices: false})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
			ents, _ := os.ReadDir(parent)
			if len(ents) != 1 {
				t.Fatalf("something was written next to the root: %v", ents)
			}
		})
	}
}

func TestCheckSymlink(t *testing.T) {
	for _, c := range []struct {
		link, target string
		ok           bool
	}{
		{"a", "b", true}, {"a/b", "../c", true}, {"a/b", "../../c", false}, {"a", "/abs", true},
		{"a/b/c", "../../x/../y", true}, {"a", "..", false}, {"a", "", false}, {"a/b", "./../..", false},
	} {
		err := CheckSymlink(c.link, c.target)
		if (err == nil) != c.ok {
			t.Errorf("CheckSymlink(%q, %q) = %v, want ok=%v", c.link, c.target, err, c.ok)
		}
		if err != nil && !errors.Is(err, ErrUnsafePath) {
			t.Errorf("error %v is not ErrUnsafePath", err)
		}
	}
}

func TestOpenRejects(t *testing.T) {
	d := t.TempDir()
	if _, err := Open(d, Platform{}); err == nil || !strings.Contains(err.Error(), "neither an OCI layout") {
		t.Fatalf("empty dir: %v", err)
	}
	os.WriteFile(filepath.Join(d, "index.json"), []byte(`{"manifests":[{"digest":"sha256:../../etc"}]}`), 0o644)
	if _, err := Open(d, Platform{}); err == nil || !strings.Contains(err.Error(), "malformed digest") {
		t.Fatalf("bad digest: %v", err)
	}
	if _, err := Open(filepath.Join(d, "missing"), Platform{}); err == nil {
		t.Fatal("missing path accepted")
	}
}

// FuzzApplyLayer feeds arbitrary tar streams (seeded with hostile ones) to
// ApplyLayer and checks nothing appears outside the destination.
func FuzzApplyLayer(f *testing.F) {
	f.Add(layerTar(f, file("a/b", "x"), ent{name: "l", typ: tar.TypeSymlink, link: "../x"}))
	f.Add(layerTar(f, ent{name: "l", typ: tar.TypeSymlink, link: "/"}, file("l/x", "y")))
	f.Add(layerTar(f, ent{name: "d", typ: tar.TypeSymlink, link: "a"}, dir("a"), file("d/.wh..wh..opq", "")))
	f.Add(layerTar(f, file("x", "1"), ent{name: "h", typ: tar.TypeLink, link: "x"}, file(".wh.x", "")))
	base := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		parent, err := os.MkdirTemp(base, "")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(parent)
		root := filepath.Join(parent, "root")
		os.Mkdir(root, 0o755)
		sentinel := filepath.Join(parent, "sentinel")
		os.WriteFile(sentinel, []byte("keep"), 0o644)
		ApplyLayer(root, bytes.NewReader(data), ApplyOptions{MaxFileSize: 1 << 20, MaxUnpackedSize: 4 << 20, MaxFiles: 1000})
		ents, _ := os.ReadDir(parent)
		if b, err := os.ReadFile(sentinel); len(ents) != 2 || err != nil || string(b) != "keep" {
			t.Fatalf("touched outside root: %v %q %v", ents, b, err)
		}
	})
}

// FuzzCleanName checks accepted names stay relative and inside the root.
func FuzzCleanName(f *testing.F) {
	for _, s := range []string{"a", "/a/b", "./a/../b", "..", "a/..", "", "a\x00b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		c, err := CleanName(name)
		if err != nil {
			return
		}
		if strings.HasPrefix(c, "/") || c == ".." || strings.HasPrefix(c, "../") || strings.Contains(c, "/../") {
			t.Fatalf("CleanName(%q) = %q", name, c)
		}
		if p := filepath.Join("/root", c); p != "/root" && !strings.HasPrefix(p, "/root/") {
			t.Fatalf("CleanName(%q) = %q leaves the root", name, c)
		}
		_ = fmt.Sprint(c)
	})
}

func TestDevicesAsRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	root := t.TempDir()
	l := layerTar(t,
		ent{name: "dev/null", typ: tar.TypeChar, mode: 0o666},
		ent{name: "run/fifo", typ: tar.TypeFifo, mode: 0o600},
	)
	// Devmajor/minor are zero in layerTar; 1:3 would be /dev/null, but the
	// node's existence and type are what matter here.
	if err := ApplyLayer(root, bytes.NewReader(l), ApplyOptions{AllowDevices: true}); err != nil {
		t.Fatal(err)
	}
	st, err := os.Lstat(filepath.Join(root, "dev/null"))
	if err != nil || st.Mode()&os.ModeCharDevice == 0 || st.Mode().Perm() != 0o666 {
		t.Fatalf("dev/null: %v %v", st.Mode(), err)
	}
	st, err = os.Lstat(filepath.Join(root, "run/fifo"))
	if err != nil || st.Mode()&os.ModeNamedPipe == 0 {
		t.Fatalf("fifo: %v %v", st, err)
	}
}

// TestSparseFileWrittenAsHoles: a sparse entry (GNU tar PAX sparse) is
// unpacked with holes, not as gigabytes of zeros.
func TestSparseFileWrittenAsHoles(t *testing.T) {
	if _, err := exec.LookPath("tar"); err != nil {
		t.Skip("GNU tar not installed")
	}
	src := t.TempDir()
	f, _ := os.Create(filepath.Join(src, "sparse"))
	f.WriteAt([]byte("middle"), 128<<20)
	f.Truncate(256 << 20)
	f.Close()
	layer, err := exec.Command("tar", "-C", src, "--sparse", "--format=pax", "-cf", "-", "sparse").Output()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("256 MiB sparse file in a %d-byte layer", len(layer))
	root := t.TempDir()
	if err := ApplyLayer(root, bytes.NewReader(layer), ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(root, "sparse")
	st, err := os.Stat(p)
	if err != nil || st.Size() != 256<<20 {
		t.Fatalf("size %v %v", st, err)
	}
	if blocks := st.Sys().(*syscall.Stat_t).Blocks * 512; blocks > 1<<20 {
		t.Fatalf("256 MiB sparse file uses %d bytes on disk, want holes", blocks)
	}
	g, _ := os.Open(p)
	defer g.Close()
	buf := make([]byte, 6)
	if _, err := g.ReadAt(buf, 128<<20); err != nil || string(buf) != "middle" {
		t.Fatalf("data at 128 MiB: %q %v", buf, err)
	}
}

// TestXattrsOwnersAndTimes: PAX SCHILY.xattr records (file capability,
// user and trusted xattrs) are applied, security.selinux only when asked;
// owners, setuid and mtimes come from the headers (hard links share them).
func TestXattrsOwnersAndTimes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("security.capability, trusted.* and chown need root")
	}
	// VFS v2 capability: cap_net_raw (bit 13) permitted + effective.
	capNetRaw := "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
	mt := time.Unix(1234567890, 0)
	l := ocitest.Tar(
		ocitest.Entry{Hdr: tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(1000, 0)}},
		ocitest.Entry{Hdr: tar.Header{Name: "bin/ping", Typeflag: tar.TypeReg, Mode: 0o4755, Uid: 0, Gid: 7, ModTime: mt,
			PAXRecords: map[string]string{"SCHILY.xattr.security.capability": capNetRaw, "SCHILY.xattr.user.note": "v",
				"SCHILY.xattr.trusted.t": "w", "SCHILY.xattr.security.selinux": "system_u:object_r:bin_t:s0"}}, Body: "ping"},
		ocitest.Hardlink("bin/ping2", "bin/ping"),
	)
	for _, keep := range []bool{false, true} {
		root := t.TempDir()
		if err := ApplyLayer(root, bytes.NewReader(l), ApplyOptions{KeepSELinux: keep}); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(root, "bin/ping")
		for attr, want := range map[string]string{"security.capability": capNetRaw, "user.note": "v", "trusted.t": "w"} {
			buf := make([]byte, 64)
			n, err := unix.Lgetxattr(p, attr, buf)
			if err != nil || string(buf[:n]) != want {
				t.Errorf("%s = %q %v, want %q", attr, buf[:n], err, want)
			}
		}
		buf := make([]byte, 64)
		_, err := unix.Lgetxattr(p, "security.selinux", buf)
		if keep != (err == nil) {
			// Hosts without an LSM that stores security.selinux refuse it.
			if !(keep && errors.Is(err, unix.EOPNOTSUPP)) {
				t.Errorf("keep=%v: security.selinux err %v", keep, err)
			}
		}
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		sys := st.Sys().(*syscall.Stat_t)
		if st.Mode()&os.ModeSetuid == 0 || sys.Gid != 7 || !st.ModTime().Equal(mt) || sys.Nlink != 2 {
			t.Errorf("ping: mode %v gid %d mtime %v nlink %d", st.Mode(), sys.Gid, st.ModTime(), sys.Nlink)
		}
		if d, _ := os.Stat(filepath.Join(root, "bin")); !d.ModTime().Equal(time.Unix(1000, 0)) {
			t.Errorf("bin mtime %v, want 1000 (restored after its entries)", d.ModTime())
		}
	}
}
