package recipe

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keelvm/keel/rootfs-builder/internal/ocitest"
)

const busybox = "/bin/busybox"

func needBusybox(t *testing.T) {
	if _, err := os.Stat(busybox); err != nil {
		t.Skip("busybox-static not installed")
	}
}

func TestCheckStaticBinary(t *testing.T) {
	needBusybox(t)
	dir := t.TempDir()
	script := filepath.Join(dir, "script")
	os.WriteFile(script, []byte("#!/bin/sh\necho hi\n"), 0o755)
	noexec := filepath.Join(dir, "noexec")
	b, _ := os.ReadFile(busybox)
	os.WriteFile(noexec, b, 0o644)
	cases := []struct{ path, want string }{
		{busybox, ""},
		{"/bin/ls", "dynamically linked"},
		{filepath.Join(dir, "missing"), "no such file"},
		{script, "not an ELF executable"},
		{noexec, "not executable"},
		{dir, "not a regular file"},
	}
	for _, c := range cases {
		err := CheckStaticBinary(c.path)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("CheckStaticBinary(%s) = %v, want %q", c.path, err, c.want)
		}
	}
}

func TestMinimalTree(t *testing.T) {
	needBusybox(t)
	dir := t.TempDir()
	res, err := Minimal{}.Build(context.Background(), dir, Options{Agent: busybox, Busybox: busybox})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Inputs) != 2 || res.Inputs[0].Role != "agent" || len(res.Inputs[0].SHA256) != 64 {
		t.Fatalf("inputs %+v", res.Inputs)
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "etc", "lib/modules"} {
		if st, err := os.Stat(filepath.Join(dir, d)); err != nil || !st.IsDir() {
			t.Errorf("missing dir %s", d)
		}
	}
	if st, _ := os.Stat(filepath.Join(dir, "tmp")); st.Mode()&os.ModeSticky == 0 || st.Mode().Perm() != 0o777 {
		t.Errorf("tmp mode %v", st.Mode())
	}
	if l, err := os.Readlink(filepath.Join(dir, "init")); err != nil || l != "sbin/init" {
		t.Errorf("/init -> %q %v", l, err)
	}
	// The agent must not be replaced by busybox's own init applet link.
	if st, err := os.Lstat(filepath.Join(dir, "sbin/init")); err != nil || !st.Mode().IsRegular() {
		t.Errorf("sbin/init is not the agent file: %v %v", st, err)
	}
	if l, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || l != "busybox" {
		t.Errorf("bin/sh -> %q %v", l, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "etc/passwd")); !strings.HasPrefix(string(b), "root:x:0:0:") {
		t.Errorf("passwd %q", b)
	}
	for _, f := range []string{"etc/group", "etc/hosts", "etc/resolv.conf"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	// busybox really runs from the tree (chroot-free check: run the copy).
	if out, err := exec.Command(filepath.Join(dir, "bin/busybox"), "echo", "ok").Output(); err != nil || string(out) != "ok\n" {
		t.Errorf("busybox copy: %q %v", out, err)
	}
}

func TestLookup(t *testing.T) {
	if _, err := Lookup("alpine"); err == nil || !strings.Contains(err.Error(), "debian minimal oci") && !strings.Contains(err.Error(), "[debian minimal oci]") {
		t.Fatalf("err = %v", err)
	}
	for _, n := range Names() {
		r, err := Lookup(n)
		if err != nil || r.Name() != n {
			t.Errorf("Lookup(%s) = %v, %v", n, r, err)
		}
	}
}

// TestInstallAgentRefusesEscapingSbin: an image whose /sbin is an absolute
// symlink must not make us write the agent onto the host.
func TestInstallAgentRefusesEscapingSbin(t *testing.T) {
	needBusybox(t)
	parent := t.TempDir()
	dir := filepath.Join(parent, "root")
	os.Mkdir(dir, 0o755)
	os.Mkdir(filepath.Join(parent, "host-sbin"), 0o755)
	os.Symlink(filepath.Join(parent, "host-sbin"), filepath.Join(dir, "sbin"))
	if _, err := InstallAgent(dir, busybox); err == nil {
		t.Fatal("agent installed through an escaping /sbin symlink")
	}
	if ents, _ := os.ReadDir(filepath.Join(parent, "host-sbin")); len(ents) != 0 {
		t.Fatalf("wrote outside the root: %v", ents)
	}
	// A relative in-tree link (Debian's merged /usr) is followed.
	dir2 := t.TempDir()
	os.MkdirAll(filepath.Join(dir2, "usr/sbin"), 0o755)
	os.Symlink("usr/sbin", filepath.Join(dir2, "sbin"))
	if _, err := InstallAgent(dir2, busybox); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir2, "usr/sbin/init")); err != nil {
		t.Fatal(err)
	}
}

func TestOCIRecipe(t *testing.T) {
	needBusybox(t)
	layer := ocitest.Tar(
		ocitest.Dir("usr/", 0o755), ocitest.Dir("usr/sbin/", 0o755), ocitest.Symlink("sbin", "usr/sbin"),
		ocitest.File("usr/sbin/init", "old", 0o755), ocitest.File("etc/os-release", "old", 0o644),
	)
	d := t.TempDir()
	if _, err := ocitest.WriteLayout(d, ocitest.Image{Layers: [][]byte{layer}}); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	res, err := OCI{}.Build(context.Background(), out, Options{Agent: busybox, OCI: d})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(out, "usr/sbin/init"))
	want, _ := os.ReadFile(busybox)
	if !bytes.Equal(got, want) {
		t.Fatal("agent not installed over the image's init")
	}
	for _, p := range []string{"proc", "sys", "dev", "run", "tmp", "etc/os-release"} {
		if _, err := os.Stat(filepath.Join(out, p)); err != nil {
			t.Error(err)
		}
	}
	if len(res.Inputs) != 2 || res.Inputs[0].Role != "layer" {
		t.Fatalf("inputs %+v", res.Inputs)
	}
}

func TestSystemMirror(t *testing.T) {
	d := t.TempDir()
	os.MkdirAll(filepath.Join(d, "sources.list.d"), 0o755)
	if _, err := SystemMirror(d); err == nil || !strings.Contains(err.Error(), "--mirror") {
		t.Fatalf("err = %v", err)
	}
	os.WriteFile(filepath.Join(d, "sources.list.d", "debian.sources"), []byte(
		"Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\nTypes: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n"), 0o644)
	if m, err := SystemMirror(d); err != nil || m != "http://mirror.example/debian" {
		t.Fatalf("deb822: %q %v", m, err)
	}
	os.WriteFile(filepath.Join(d, "sources.list"), []byte("# c\ndeb [arch=amd64] http://old.example/debian bookworm main\n"), 0o644)
	if m, err := SystemMirror(d); err != nil || m != "http://old.example/debian" {
		t.Fatalf("one-line: %q %v", m, err)
	}
}

func TestDebianRejectsBadRelease(t *testing.T) {
	needBusybox(t)
	_, err := Debian{}.Build(context.Background(), t.TempDir(), Options{Agent: busybox, Release: "../../etc", Mirror: "http://x"})
	if err == nil || !strings.Contains(err.Error(), "invalid Debian release") {
		t.Fatalf("err = %v", err)
	}
}

// TestDebianPackages: extra packages are checked before anything runs (no
// option smuggled into mmdebstrap's --include) and normalised, so one set
// always names one cache entry.
func TestDebianPackages(t *testing.T) {
	needBusybox(t)
	for _, bad := range []string{"runc,--hook", "--aptopt=x", "Runc", "a b", "", "x"} {
		_, err := Debian{}.Build(context.Background(), t.TempDir(), Options{Agent: busybox, Mirror: "http://x", CacheDir: t.TempDir(), Packages: []string{"crun", bad}})
		if err == nil || !strings.Contains(err.Error(), "invalid Debian package name") {
			t.Errorf("package %q: err = %v", bad, err)
		}
	}
	got, err := packageSet([]string{"runc", "crun", "runc", "libc6-dev", "g++"})
	if err != nil || strings.Join(got, ",") != "crun,g++,libc6-dev,runc" {
		t.Errorf("packageSet = %q, %v", got, err)
	}
}
