package build

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keelvm/keel/rootfs-builder/image"
	"github.com/keelvm/keel/rootfs-builder/internal/ocitest"
)

// capNetRaw is a VFS v2 security.capability value: cap_net_raw (bit 13)
// permitted and effective, as `setcap cap_net_raw+ep` writes it.
const capNetRaw = "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

// snapOpts choose what snapshot records.
type snapOpts struct {
	mtimes  bool // record mtimes (directories' too)
	dirSize bool
	skip    map[string]bool // root-relative paths (and their subtrees) to leave out
}

// snapshot describes every entry under dir: type and mode bits, owner,
// size, content hash, link target, xattrs (security.selinux excluded) and
// hard-link group (the first path of the inode's group).
func snapshot(t *testing.T, dir string, o snapOpts) map[string]string {
	t.Helper()
	out := map[string]string{}
	groups := map[uint64][]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		if o.skip[rel] {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		sys := st.Sys().(*syscall.Stat_t)
		s := fmt.Sprintf("%v %d:%d", st.Mode(), sys.Uid, sys.Gid)
		switch {
		case st.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s += fmt.Sprintf(" size=%d sha=%x", st.Size(), sha256.Sum256(b))
			if sys.Nlink > 1 {
				groups[sys.Ino] = append(groups[sys.Ino], rel)
			}
		case st.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			s += " -> " + l
		case st.IsDir() && o.dirSize:
			s += fmt.Sprintf(" size=%d", st.Size())
		case st.Mode()&fs.ModeDevice != 0:
			s += fmt.Sprintf(" dev=%d:%d", unix.Major(sys.Rdev), unix.Minor(sys.Rdev))
		}
		if o.mtimes {
			s += " mtime=" + st.ModTime().UTC().Format(time.RFC3339)
		}
		s += " xattrs=" + xattrString(t, p)
		out[rel] = s
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups {
		sort.Strings(g)
		for _, p := range g {
			out[p] += " linkgroup=" + g[0]
		}
	}
	return out
}

func xattrString(t *testing.T, p string) string {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return ""
		}
		t.Fatalf("listxattr %s: %v", p, err)
	}
	var names []string
	for _, a := range strings.Split(string(buf[:n]), "\x00") {
		if a != "" && a != "security.selinux" {
			names = append(names, a)
		}
	}
	sort.Strings(names)
	var parts []string
	for _, a := range names {
		v := make([]byte, 4096)
		m, err := unix.Lgetxattr(p, a, v)
		if err != nil {
			t.Fatalf("getxattr %s %s: %v", p, a, err)
		}
		parts = append(parts, fmt.Sprintf("%s=%x", a, v[:m]))
	}
	return strings.Join(parts, ",")
}

// diffSnapshots reports entries that differ, are missing or are extra.
func diffSnapshots(t *testing.T, what string, want, got map[string]string) {
	t.Helper()
	var d []string
	for k, w := range want {
		if g, ok := got[k]; !ok {
			d = append(d, "missing "+k+": "+w)
		} else if g != w {
			d = append(d, fmt.Sprintf("%s:\n\t  want %s\n\t  got  %s", k, w, g))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			d = append(d, "extra "+k+": "+g)
		}
	}
	sort.Strings(d)
	if len(d) > 0 {
		if len(d) > 25 {
			d = append(d[:25], fmt.Sprintf("... %d more", len(d)-25))
		}
		t.Errorf("%s differs:\n\t%s", what, strings.Join(d, "\n\t"))
	}
}

// mountImage loop-mounts a (non-DAX) image read-only for the test.
func mountImage(t *testing.T, img string) string {
	t.Helper()
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-o", "ro,loop", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount %s: %v: %s", img, err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	return mnt
}

// keelAdded are the paths keel-rootfs adds to an image's tree.
var keelAdded = map[string]bool{"sbin": true, "init": true, "dev": true, "proc": true, "sys": true, "run": true, "tmp": true}

// buildAll builds the image at src as a dir, an ext4 and an erofs image and
// returns their snapshots (ext4's lost+found left out), keyed by output.
func buildAll(t *testing.T, src string, epoch int64, o snapOpts) map[string]map[string]string {
	t.Helper()
	snaps := map[string]map[string]string{}
	for _, kind := range []string{"dir", "ext4", "erofs"} {
		out := filepath.Join(t.TempDir(), "artifact")
		cfg := Config{Recipe: "oci", Options: optsAgent(), Output: OutputImage, FS: image.FS(kind), Out: out, Epoch: epoch}
		if kind == "dir" {
			cfg.Output = OutputDir
		}
		cfg.OCI = src
		if _, err := Run(context.Background(), cfg); err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		root := out
		so := o
		if kind != "dir" {
			root = mountImage(t, out)
			so.skip = map[string]bool{"lost+found": true}
			for k := range o.skip {
				so.skip[k] = true
			}
		}
		snaps[kind] = snapshot(t, root, so)
	}
	return snaps
}

// fidelityImage is a generated two-layer image exercising everything a
// rootfs must keep: owners, setuid/setgid/sticky, a file capability and
// user/trusted xattrs, a hard-link group, symlinks, a fifo, whiteouts, an
// opaque directory, an old mtime and one newer than the build epoch.
func fidelityImage(withXattrs bool) ocitest.Image {
	old, future := time.Unix(1000, 0), time.Unix(1900000000, 0)
	h := func(name string, typ byte, mode int64, uid, gid int, mt time.Time, pax map[string]string) tar.Header {
		return tar.Header{Name: name, Typeflag: typ, Mode: mode, Uid: uid, Gid: gid, ModTime: mt, PAXRecords: pax}
	}
	pingX := map[string]string{"SCHILY.xattr.security.capability": capNetRaw}
	noteX := map[string]string{"SCHILY.xattr.user.note": "kept", "SCHILY.xattr.trusted.overlay": "t"}
	if !withXattrs {
		pingX, noteX = nil, nil
	}
	l1 := ocitest.Tar(
		ocitest.Entry{Hdr: h("bin/", tar.TypeDir, 0o755, 0, 0, old, nil)},
		ocitest.Entry{Hdr: h("bin/ping", tar.TypeReg, 0o4755, 0, 0, old, pingX), Body: "ping binary"},
		ocitest.Hardlink("bin/ping6", "bin/ping"),
		ocitest.Entry{Hdr: h("bin/wall", tar.TypeReg, 0o2755, 0, 5, old, nil), Body: "wall"},
		ocitest.Entry{Hdr: h("etc/", tar.TypeDir, 0o755, 0, 0, old, nil)},
		ocitest.Entry{Hdr: h("etc/shadow", tar.TypeReg, 0o640, 0, 42, old, nil), Body: "root:*:1::::::\n"},
		ocitest.Entry{Hdr: h("etc/note", tar.TypeReg, 0o644, 1000, 1000, future, noteX), Body: "note"},
		ocitest.Entry{Hdr: h("etc/gone", tar.TypeReg, 0o644, 0, 0, old, nil), Body: "lower"},
		ocitest.Entry{Hdr: h("srv/", tar.TypeDir, 0o1777, 0, 0, old, nil)},
		ocitest.Entry{Hdr: h("var/cache/", tar.TypeDir, 0o755, 0, 0, old, nil)},
		ocitest.Entry{Hdr: h("var/cache/lower", tar.TypeReg, 0o644, 0, 0, old, nil), Body: "lower"},
		ocitest.Entry{Hdr: h("var/fifo", tar.TypeFifo, 0o600, 0, 0, old, nil)},
		ocitest.Symlink("usr/bin", "../bin"),
		ocitest.Symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
	)
	l2 := ocitest.Tar(
		ocitest.File("etc/.wh.gone", "", 0o644),
		ocitest.Entry{Hdr: h("var/cache/", tar.TypeDir, 0o755, 0, 0, old, nil)},
		ocitest.File("var/cache/.wh..wh..opq", "", 0o644),
		ocitest.Entry{Hdr: h("var/cache/upper", tar.TypeReg, 0o600, 7, 7, old, nil), Body: "upper"},
	)
	return ocitest.Image{Layers: [][]byte{l1, l2}, Gzip: true}
}

// TestFidelityOutputs builds a generated image as dir, ext4, erofs and
// initrd and checks each keeps what the layers say: owners, mode bits,
// xattrs (file capability, user.*, trusted.*), hard links, whiteouts,
// opaque dirs, mtimes clamped to the epoch with older ones kept. An initrd
// of an image with xattrs is refused naming the file; without xattrs it
// matches the dir output (checked by extracting it with GNU cpio).
func TestFidelityOutputs(t *testing.T) {
	needTools(t, "mkfs.ext4", "mkfs.erofs", "debugfs", "cpio")
	if os.Geteuid() != 0 {
		t.Skip("needs root: owners, security.capability and trusted.* xattrs, loop mounts")
	}
	const epoch = 1700000000
	src := t.TempDir()
	if _, err := ocitest.WriteLayout(src, fidelityImage(true)); err != nil {
		t.Fatal(err)
	}
	o := snapOpts{mtimes: true, skip: keelAdded}
	snaps := buildAll(t, src, epoch, o)
	dir := snaps["dir"]
	oldT := time.Unix(1000, 0).UTC().Format(time.RFC3339)
	for p, want := range map[string][]string{
		"bin/ping":        {"urwxr-xr-x 0:0", "security.capability=" + fmt.Sprintf("%x", capNetRaw), "linkgroup=bin/ping", "mtime=" + oldT},
		"bin/ping6":       {"urwxr-xr-x 0:0", "linkgroup=bin/ping"},
		"bin/wall":        {"grwxr-xr-x 0:5"},
		"etc/shadow":      {"-rw-r----- 0:42"},
		"etc/note":        {"1000:1000", "user.note=" + fmt.Sprintf("%x", "kept"), "trusted.overlay=74", "mtime=" + time.Unix(epoch, 0).UTC().Format(time.RFC3339)},
		"srv":             {"dtrwxrwxrwx"},
		"var/fifo":        {"prw-------"},
		"usr/bin":         {"-> ../bin"},
		"etc/localtime":   {"-> /usr/share/zoneinfo/UTC"},
		"var/cache/upper": {"-rw------- 7:7"},
	} {
		for _, w := range want {
			if !strings.Contains(dir[p], w) {
				t.Errorf("dir output %s = %q, want %q in it", p, dir[p], w)
			}
		}
	}
	for _, gone := range []string{"etc/gone", "var/cache/lower"} {
		if _, ok := dir[gone]; ok {
			t.Errorf("%s survived its whiteout", gone)
		}
	}
	for _, kind := range []string{"ext4", "erofs"} {
		diffSnapshots(t, kind+" vs dir", dir, snaps[kind])
	}

	// initrd: refused with xattrs, exact without.
	out := filepath.Join(t.TempDir(), "initrd")
	cfg := Config{Recipe: "oci", Options: optsAgent(), Output: OutputInitrd, Out: out, Epoch: epoch}
	cfg.OCI = src
	if _, err := Run(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "/bin/ping has extended attributes (security.capability)") {
		t.Fatalf("initrd of an image with xattrs: %v", err)
	}
	if _, err := os.Lstat(out); !os.IsNotExist(err) {
		t.Fatal("refused initrd left a file")
	}
	plain := t.TempDir()
	if _, err := ocitest.WriteLayout(plain, fidelityImage(false)); err != nil {
		t.Fatal(err)
	}
	cfg.OCI = plain
	cfg.Compression = "none"
	if _, err := Run(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	ext := t.TempDir()
	f, _ := os.Open(out)
	defer f.Close()
	cmd := exec.Command("cpio", "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir, cmd.Stdin = ext, f
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -idm: %v: %s", err, b)
	}
	dirOut := filepath.Join(t.TempDir(), "dir")
	cfg.Output, cfg.Out = OutputDir, dirOut
	if _, err := Run(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	// GNU cpio sets a directory's mtime before filling it; compare file
	// mtimes only.
	so := snapOpts{skip: keelAdded}
	want, got := snapshot(t, dirOut, so), snapshot(t, ext, so)
	diffSnapshots(t, "initrd (cpio -idm) vs dir", want, got)
	if !strings.Contains(got["bin/ping6"], "linkgroup=bin/ping") || !strings.Contains(got["etc/shadow"], " 0:42") {
		t.Errorf("initrd lost hard links or owners: %q %q", got["bin/ping6"], got["etc/shadow"])
	}
}

// TestFidelityAgainstUmoci builds an image with real tools (umoci for the
// layers, skopeo for a docker save copy of it) from a generated base with
// owners, setuid/setgid/sticky, a file capability, user/trusted xattrs,
// hard links, symlinks and a fifo, then a second layer with whiteouts and a
// replaced directory, and compares keel-rootfs's dir, ext4 and erofs
// outputs (from the OCI layout and from the docker archive) with umoci's
// own extraction: type, mode, owner, size, hash, link target, xattrs,
// hard-link groups and mtimes.
func TestFidelityAgainstUmoci(t *testing.T) {
	needTools(t, "mkfs.ext4", "mkfs.erofs", "debugfs")
	for _, tool := range []string{"umoci", "skopeo"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (scripts/apt-packages.txt lists it)", tool)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: owners, security.capability and trusted.* xattrs, loop mounts")
	}
	work := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir = work
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	run("umoci", "init", "--layout", "L")
	run("umoci", "new", "--image", "L:t")
	run("umoci", "unpack", "--image", "L:t", "b1")
	r := filepath.Join(work, "b1/rootfs")
	p := func(rel string) string { return filepath.Join(r, rel) }
	for _, d := range []string{"bin", "etc", "srv", "var/cache/sub", "var/lib", "usr/share/zoneinfo"} {
		must(os.MkdirAll(p(d), 0o755))
	}
	must(os.WriteFile(p("bin/ping"), []byte("ping binary"), 0o755))
	must(os.Chmod(p("bin/ping"), 0o755|os.ModeSetuid))
	must(unix.Setxattr(p("bin/ping"), "security.capability", []byte(capNetRaw), 0))
	must(os.Link(p("bin/ping"), p("bin/ping6")))
	must(os.WriteFile(p("bin/wall"), []byte("wall"), 0o755))
	must(os.Chown(p("bin/wall"), 0, 5))
	must(os.Chmod(p("bin/wall"), 0o755|os.ModeSetgid))
	must(os.WriteFile(p("etc/shadow"), []byte("root:*:1::::::\n"), 0o640))
	must(os.Chown(p("etc/shadow"), 0, 42))
	must(os.WriteFile(p("etc/note"), []byte("note"), 0o644))
	must(os.Chown(p("etc/note"), 1000, 1000))
	must(unix.Setxattr(p("etc/note"), "user.note", []byte("kept"), 0))
	must(unix.Setxattr(p("etc/note"), "trusted.overlay", []byte("t"), 0))
	must(os.WriteFile(p("etc/gone"), []byte("lower"), 0o644))
	must(os.Chmod(p("srv"), 0o777|os.ModeSticky))
	must(os.WriteFile(p("var/cache/sub/lower"), []byte("lower"), 0o644))
	must(os.WriteFile(p("usr/share/zoneinfo/UTC"), []byte("TZif"), 0o644))
	must(os.Symlink("/usr/share/zoneinfo/UTC", p("etc/localtime")))
	must(os.Symlink("../bin/ping", p("usr/ping")))
	must(unix.Mkfifo(p("var/lib/fifo"), 0o600))
	must(os.Chtimes(p("etc/shadow"), time.Unix(1000, 0), time.Unix(1000, 0)))
	run("umoci", "repack", "--image", "L:t", "b1")
	run("umoci", "unpack", "--image", "L:t", "b2")
	r = filepath.Join(work, "b2/rootfs")
	must(os.Remove(p("etc/gone")))
	must(os.RemoveAll(p("var/cache")))
	must(os.MkdirAll(p("var/cache"), 0o700))
	must(os.WriteFile(p("var/cache/upper"), []byte("upper"), 0o600))
	must(os.Chown(p("var/cache/upper"), 7, 7))
	must(os.WriteFile(p("bin/wall"), []byte("wall v2"), 0o755))
	must(os.Chown(p("bin/wall"), 0, 5))
	must(os.Chmod(p("bin/wall"), 0o755|os.ModeSetgid))
	run("umoci", "repack", "--image", "L:t", "b2")
	run("umoci", "unpack", "--image", "L:t", "ref")
	run("skopeo", "copy", "--quiet", "oci:L:t", "docker-archive:"+filepath.Join(work, "docker.tar")+":keel/t:1")

	// An epoch after every mtime: nothing is clamped, so mtimes compare too.
	const epoch = 4000000000
	o := snapOpts{mtimes: true, skip: keelAdded}
	want := snapshot(t, filepath.Join(work, "ref/rootfs"), o)
	for _, must := range []string{"bin/ping", "bin/ping6", "etc/note", "var/cache/upper", "var/lib/fifo"} {
		if _, ok := want[must]; !ok {
			t.Fatalf("umoci's extraction lacks %s: the test image is not what it should be", must)
		}
	}
	if !strings.Contains(want["bin/ping"], "security.capability=") || !strings.Contains(want["bin/ping6"], "linkgroup=bin/ping") {
		t.Fatalf("umoci's extraction lost the capability or hard link: %q", want["bin/ping"])
	}
	for _, gone := range []string{"etc/gone", "var/cache/sub"} {
		if _, ok := want[gone]; ok {
			t.Fatalf("umoci's extraction kept %s", gone)
		}
	}
	for src, name := range map[string]string{filepath.Join(work, "L"): "oci-layout", filepath.Join(work, "docker.tar"): "docker-save"} {
		for kind, got := range buildAll(t, src, epoch, o) {
			diffSnapshots(t, name+" "+kind+" vs umoci unpack", want, got)
		}
	}
}

// TestEpochFromImage: without SOURCE_DATE_EPOCH an oci build takes the
// image's newest mtime as its epoch, so no image file's time changes, what
// keel adds gets that time, and two builds are still byte-identical.
func TestEpochFromImage(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs")
	if os.Geteuid() != 0 {
		t.Skip("needs root to loop-mount the image")
	}
	at := func(name string, sec int64) ocitest.Entry {
		e := ocitest.File(name, name, 0o644)
		e.Hdr.ModTime = time.Unix(sec, 0)
		return e
	}
	src := t.TempDir()
	if _, err := ocitest.WriteLayout(src, ocitest.Image{Layers: [][]byte{ocitest.Tar(at("usr/lib/python3/x.py", 1600000000), at("etc/old", 1000))}}); err != nil {
		t.Fatal(err)
	}
	var sums []string
	for i := range 2 {
		out := filepath.Join(t.TempDir(), "artifact")
		cfg := Config{Recipe: "oci", Options: optsAgent(), Output: OutputImage, FS: image.Ext4, Out: out, EpochFromImage: true}
		cfg.OCI = src
		m, err := Run(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if m.SourceDateEpoch != 1600000000 {
			t.Fatalf("epoch %d, want the image's newest mtime 1600000000", m.SourceDateEpoch)
		}
		sums = append(sums, m.SHA256)
		if i == 0 {
			mnt := mountImage(t, out)
			for p, want := range map[string]int64{"usr/lib/python3/x.py": 1600000000, "etc/old": 1000, "sbin/init": 1600000000} {
				st, err := os.Lstat(filepath.Join(mnt, p))
				if err != nil || st.ModTime().Unix() != want {
					t.Errorf("%s: mtime %v %v, want %d", p, st.ModTime().Unix(), err, want)
				}
			}
		}
	}
	if sums[0] != sums[1] {
		t.Fatal("two builds with the epoch from the image differ")
	}
}
