package build

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keelvm/keel/rootfs-builder/cpio"
	"github.com/keelvm/keel/rootfs-builder/image"
	"github.com/keelvm/keel/rootfs-builder/internal/ocitest"
	"github.com/keelvm/keel/rootfs-builder/pfn"
)

// stand-in agent: Debian's busybox-static is a static ELF.
const busybox = "/bin/busybox"

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range append([]string{busybox}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

func sha(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return fmt.Sprintf("%x", h.Sum(nil))
}

// TestReproducible builds each artifact kind twice in different
// directories and compares digests.
func TestReproducible(t *testing.T) {
	needTools(t, "mkfs.ext4", "mkfs.erofs", "debugfs", "zstd")
	cases := []struct {
		name string
		cfg  Config
	}{
		{"ext4-dax", Config{Output: OutputImage, FS: image.Ext4, DAX: true, Options: recipeOptions{Busybox: busybox}}},
		{"ext4", Config{Output: OutputImage, FS: image.Ext4}},
		{"erofs-dax", Config{Output: OutputImage, FS: image.EROFS, DAX: true}},
		{"initrd-gzip", Config{Output: OutputInitrd, Compression: cpio.Gzip}},
		{"initrd-zstd", Config{Output: OutputInitrd, Compression: cpio.Zstd}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var sums []string
			for i := range 2 {
				cfg := c.cfg
				cfg.Recipe = "minimal"
				cfg.Agent = busybox
				cfg.Epoch = 1700000000
				cfg.Out = filepath.Join(t.TempDir(), "artifact")
				m, err := Run(context.Background(), cfg)
				if err != nil {
					t.Fatal(err)
				}
				sums = append(sums, sha(t, cfg.Out))
				if m.SHA256 != sums[i] {
					t.Fatalf("manifest sha %s, file %s", m.SHA256, sums[i])
				}
				r, err := Inspect(cfg.Out)
				if err != nil {
					t.Fatal(err)
				}
				if cfg.DAX != (r.PFN != nil) || r.Manifest == nil {
					t.Fatalf("inspect: pfn %v manifest %v", r.PFN, r.Manifest)
				}
				if cfg.DAX && (r.PFN.DataOff != pfn.DefaultDataOffset || m.FS.Offset != pfn.DefaultDataOffset || r.Size%(2<<20) != 0) {
					t.Fatalf("dax layout: dataoff %#x fs offset %#x size %d", r.PFN.DataOff, m.FS.Offset, r.Size)
				}
			}
			if sums[0] != sums[1] {
				t.Fatalf("two builds differ: %s vs %s", sums[0], sums[1])
			}
			t.Logf("%s: %s", c.name, sums[0][:16])
		})
	}
}

// TestExt4ImageContent checks the image with e2fsck and debugfs: the
// agent is /sbin/init, /init links to it, tmp is sticky, all times fixed.
func TestExt4ImageContent(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs", "e2fsck")
	out := filepath.Join(t.TempDir(), "root.img")
	if _, err := Run(context.Background(), Config{Recipe: "minimal", Options: optsAgent(), Output: OutputImage, FS: image.Ext4, Out: out, Epoch: 42}); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command("e2fsck", "-fn", out).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck: %v\n%s", err, b)
	}
	stat := func(p string) string {
		b, err := exec.Command("debugfs", "-R", "stat "+p, out).Output()
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	init := stat("/sbin/init")
	st, _ := os.Stat(busybox)
	for _, want := range []string{"Mode:  0755", fmt.Sprintf("Size: %d", st.Size()), "ctime: 0x0000002a:00000000", "atime: 0x0000002a", "mtime: 0x0000002a"} {
		if !strings.Contains(init, want) {
			t.Errorf("/sbin/init: missing %q in\n%s", want, init)
		}
	}
	if s := stat("/tmp"); !strings.Contains(s, "Mode:  01777") {
		t.Errorf("/tmp mode:\n%s", s)
	}
	if s := stat("/init"); !strings.Contains(s, `Fast link dest: "sbin/init"`) {
		t.Errorf("/init:\n%s", s)
	}
}

func optsAgent() (o recipeOptions) {
	o.Agent = busybox
	return o
}

// TestInitrdContent checks /init, /dev/console and the agent in the cpio.
func TestInitrdContent(t *testing.T) {
	needTools(t)
	out := filepath.Join(t.TempDir(), "initrd")
	if _, err := Run(context.Background(), Config{Recipe: "minimal", Options: optsAgent(), Output: OutputInitrd, Compression: cpio.None, Out: out}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := cpio.NewReader(f)
	seen := map[string]*cpio.Header{}
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		seen[h.Name] = h
	}
	if h := seen["dev/console"]; h == nil || h.Mode != 0o20600 || h.RdevMajor != 5 || h.RdevMinor != 1 {
		t.Errorf("dev/console: %+v", h)
	}
	if h := seen["init"]; h == nil || h.Mode&0o170000 != 0o120000 {
		t.Errorf("init: %+v", h)
	}
	if h := seen["sbin/init"]; h == nil || h.Mode != 0o100755 {
		t.Errorf("sbin/init: %+v", h)
	}
}

// TestBadInput asserts clear errors and that nothing is left behind.
func TestBadInput(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs")
	dir := t.TempDir()
	ro := filepath.Join(dir, "ro")
	os.Mkdir(ro, 0o555)
	notELF := filepath.Join(dir, "script")
	os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755)
	base := func(mut func(*Config)) Config {
		c := Config{Recipe: "minimal", Options: optsAgent(), Output: OutputImage, FS: image.Ext4, Out: filepath.Join(dir, "out.img")}
		mut(&c)
		return c
	}
	cases := []struct {
		name  string
		cfg   Config
		want  string
		usage bool
	}{
		{"unknown recipe", base(func(c *Config) { c.Recipe = "alpine" }), `unknown recipe "alpine"`, true},
		{"unknown output", base(func(c *Config) { c.Output = "iso" }), `unknown output "iso"`, true},
		{"unknown fs", base(func(c *Config) { c.FS = "xfs" }), `unknown filesystem "xfs"`, true},
		{"no agent", base(func(c *Config) { c.Agent = "" }), "missing --agent", true},
		{"missing agent", base(func(c *Config) { c.Agent = filepath.Join(dir, "nope") }), "no such file", false},
		{"dynamic agent", base(func(c *Config) { c.Agent = "/bin/ls" }), "dynamically linked", false},
		{"script agent", base(func(c *Config) { c.Agent = notELF }), "not an ELF executable", false},
		{"too small", base(func(c *Config) { c.Size = 1 << 20 }), "image too small", false},
		{"unwritable dir", base(func(c *Config) { c.Out = filepath.Join(ro, "out.img") }), "not writable", false},
		{"missing dir", base(func(c *Config) { c.Out = filepath.Join(dir, "missing/out.img") }), "does not exist", false},
		{"dax initrd", base(func(c *Config) { c.Output = OutputInitrd; c.DAX = true }), "--dax only applies", true},
		{"oci without image", base(func(c *Config) { c.Recipe = "oci" }), "needs --oci", false},
		{"missing module", base(func(c *Config) { c.ModulesDir = dir; c.Modules = []string{"nd_pmem"} }), "modules.dep", false},
		{"oci tar escape", base(func(c *Config) { c.Recipe = "oci"; c.OCI = evilLayout(t) }), `contains ".."`, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.name == "unwritable dir" && os.Geteuid() == 0 {
				// root ignores permission bits; use a read-only bind instead.
				if err := exec.Command("mount", "--bind", "-o", "ro", ro, ro).Run(); err != nil {
					t.Skip("cannot make a read-only directory as root:", err)
				}
				exec.Command("mount", "-o", "remount,bind,ro", ro).Run()
				t.Cleanup(func() { exec.Command("umount", ro).Run() })
			}
			_, err := Run(context.Background(), c.cfg)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
			if got := IsUsage(err); got != c.usage {
				t.Errorf("usage error = %v, want %v", got, c.usage)
			}
			for _, p := range []string{c.cfg.Out, c.cfg.Out + ".json"} {
				if _, err := os.Lstat(p); !os.IsNotExist(err) {
					t.Errorf("%s exists after failure", p)
				}
			}
			ents, _ := os.ReadDir(filepath.Dir(c.cfg.Out))
			for _, e := range ents {
				if e.Name() != "ro" && e.Name() != "script" {
					t.Errorf("leftover %s", e.Name())
				}
			}
		})
	}
}

// evilLayout is an OCI layout whose only layer writes ../evil.
func evilLayout(t *testing.T) string {
	t.Helper()
	layer := ocitest.Tar(ocitest.Entry{Hdr: tar.Header{Name: "../evil", Typeflag: tar.TypeReg, Mode: 0o644}, Body: "x"})
	d := t.TempDir()
	if _, err := ocitest.WriteLayout(d, ocitest.Image{Layers: [][]byte{layer}}); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestInspectDetectsTampering(t *testing.T) {
	needTools(t, "mkfs.erofs")
	out := filepath.Join(t.TempDir(), "root.img")
	if _, err := Run(context.Background(), Config{Recipe: "minimal", Options: optsAgent(), Output: OutputImage, FS: image.EROFS, DAX: true, Out: out}); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(out, os.O_RDWR, 0)
	f.WriteAt([]byte{0xff}, pfn.InfoOffset+100)
	f.Close()
	if _, err := Inspect(out); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("err = %v", err)
	}
}
