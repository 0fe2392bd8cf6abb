package build

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/keelvm/keel/rootfs-builder/image"
	"github.com/keelvm/keel/rootfs-builder/internal/ocitest"
)

// hashTree fingerprints everything under dir (type, mode, owner, size,
// mtime, content hash, link target, xattr names) so a test can prove a
// build left it untouched.
func hashTree(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		sys := st.Sys().(*syscall.Stat_t)
		line := fmt.Sprintf("%s %v %d:%d %d %d", p, st.Mode(), sys.Uid, sys.Gid, st.Size(), st.ModTime().UnixNano())
		switch {
		case st.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" %x", sha256.Sum256(b))
		case st.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			line += " -> " + l
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	sum := sha256.Sum256([]byte(strings.Join(lines, "\n")))
	return fmt.Sprintf("%x", sum)
}

// sparseLayer makes a layer holding one sparse file of the given logical
// size with GNU tar (PAX sparse format 1.0): a few hundred bytes of tar
// that claim size bytes.
func sparseLayer(t *testing.T, size int64) []byte {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "bomb"))
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("x"), size/2)
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.Command("tar", "-C", dir, "--sparse", "--format=pax", "-cf", "-", "bomb").Output()
	if err != nil {
		t.Fatalf("tar --sparse: %v", err)
	}
	return out
}

// TestHostileImages is the hostile corpus: images generated here (never
// downloaded) that try to escape the staging directory, smuggle a host
// file in, break their digests, claim another platform or blow up on
// unpacking. Each is refused with an error naming the layer and entry (or
// the image path), leaves no output, and a sentinel tree outside the
// staging directory — the target of every escape — is unchanged, by hash.
// This test holds SPECIFICATION.md's "keel-rootfs never writes outside its
// staging directory".
func TestHostileImages(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs", "tar")
	if os.Geteuid() != 0 {
		t.Skip("needs root: owners and xattrs of the corpus are applied as root")
	}
	base := t.TempDir()
	host := filepath.Join(base, "host")
	os.MkdirAll(filepath.Join(host, "dir/modules"), 0o755)
	os.WriteFile(filepath.Join(host, "file"), []byte("host secret\n"), 0o600)
	os.WriteFile(filepath.Join(host, "dir/inner"), []byte("inner\n"), 0o644)
	os.WriteFile(filepath.Join(host, "dir/modules/modules.dep"), []byte("host's own\n"), 0o644)
	os.Symlink("file", filepath.Join(host, "link"))
	before := hashTree(t, host)

	const kver = "6.1.0-keeltest"
	mods := filepath.Join(base, "modules", kver)
	os.MkdirAll(filepath.Join(mods, "kernel/fs"), 0o755)
	os.WriteFile(filepath.Join(mods, "kernel/fs/a.ko"), []byte("\x7fELF module"), 0o644)
	os.WriteFile(filepath.Join(mods, "modules.dep"), []byte("kernel/fs/a.ko:\n"), 0o644)

	E, F, D, S, H := func(n string) ocitest.Entry { return ocitest.File(n, "", 0o644) }, ocitest.File, ocitest.Dir, ocitest.Symlink, ocitest.Hardlink
	hostFile, hostDir := filepath.Join(host, "file"), filepath.Join(host, "dir")
	layout := func(im ocitest.Image, tamper func(dir string, w ocitest.Written)) func(t *testing.T) string {
		return func(t *testing.T) string {
			d := t.TempDir()
			w, err := ocitest.WriteLayout(d, im)
			if err != nil {
				t.Fatal(err)
			}
			if tamper != nil {
				tamper(d, w)
			}
			return d
		}
	}
	layers := func(ents ...ocitest.Entry) ocitest.Image {
		return ocitest.Image{Layers: [][]byte{ocitest.Tar(D("etc/", 0o755), F("etc/ok", "fine", 0o644)), ocitest.Tar(ents...)}, Gzip: true}
	}
	overwrite := func(rel string, data []byte) func(string, ocitest.Written) {
		return func(d string, w ocitest.Written) {
			name := map[string]string{"manifest": w.Manifest, "config": w.Config, "layer": ""}[rel]
			if rel == "layer" {
				name = w.Layers[1]
			}
			if err := os.WriteFile(filepath.Join(d, name), data, 0o644); err != nil {
				panic(err)
			}
		}
	}
	docker := func(im ocitest.Image, replace func(w ocitest.Written) map[string][]byte) func(t *testing.T) string {
		return func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "img.tar")
			w, err := ocitest.WriteDockerSave(p, im, nil)
			if err != nil {
				t.Fatal(err)
			}
			if replace != nil {
				if _, err := ocitest.WriteDockerSave(p, im, replace(w)); err != nil {
					t.Fatal(err)
				}
			}
			return p
		}
	}
	good := layers(F("etc/motd", "hi", 0o644))

	cases := []struct {
		name    string
		image   func(t *testing.T) string
		mut     func(*Config)
		want    []string
		outputs []string // default: image
	}{
		{name: "dotdot name", image: layout(layers(F("../../host/file", "pwned", 0o644)), nil),
			want: []string{"layer 2 (", `entry "../../host/file"`, `contains ".."`}},
		{name: "escaping relative symlink", image: layout(layers(S("etc/l", "../../../host/file")), nil),
			want: []string{"layer 2 (", `entry "etc/l"`, "escapes the root"}},
		{name: "write through absolute-parent symlink", image: layout(layers(S("l", hostDir), F("l/inner", "pwned", 0o644)), nil),
			want: []string{"layer 2 (", `entry "l/inner"`, "escapes"}},
		{name: "write through symlink chain", image: layout(layers(S("d", "."), S("d/x", "/"), F("d/x/"+hostFile[1:], "pwned", 0o644)), nil),
			want: []string{"layer 2 (", `entry "d/x/`, "escapes"}},
		{name: "hardlink to host file", image: layout(layers(H("etc/shadow", hostFile)), nil),
			want: []string{"layer 2 (", `entry "etc/shadow"`, "is absolute"}},
		{name: "hardlink escaping", image: layout(layers(H("etc/shadow", "../../host/file")), nil),
			want: []string{"layer 2 (", `entry "etc/shadow"`, "escapes the root"}},
		{name: "hardlink through absolute symlink", image: layout(layers(S("h", host), H("etc/shadow", "h/file")), nil),
			want: []string{"layer 2 (", `entry "etc/shadow"`, "escapes"}},
		{name: "whiteout through absolute symlink", image: layout(layers(S("h", host), E("h/.wh.file")), nil),
			want: []string{"layer 2 (", `entry "h/.wh.file"`, "escapes"}},
		{name: "opaque through absolute symlink", image: layout(layers(S("h", hostDir), E("h/.wh..wh..opq")), nil),
			want: []string{"layer 2 (", `entry "h/.wh..wh..opq"`, "escapes"}},
		{name: "whiteout dotdot", image: layout(layers(E("etc/.wh...")), nil),
			want: []string{"layer 2 (", `whiteout names ".."`}},
		{name: "whiteout of nothing", image: layout(layers(E("etc/.wh.")), nil),
			want: []string{"layer 2 (", `whiteout names ""`}},
		{name: "sbin absolute symlink", image: layout(layers(S("sbin", hostDir)), nil),
			want: []string{"/sbin/init", "escapes"}},
		{name: "modules.dep symlink to host file", image: layout(layers(D("lib/modules/"+kver+"/", 0o755), S("lib/modules/"+kver+"/modules.dep", filepath.Join(hostDir, "modules/modules.dep"))), nil),
			mut:  func(c *Config) { c.ModulesDir, c.Modules = mods, []string{"a"} },
			want: []string{"/lib/modules/" + kver + "/modules.dep", "symlink"}},
		{name: "symlinked modules dir", image: layout(layers(D("lib/modules/", 0o755), S("lib/modules/"+kver, hostDir)), nil),
			mut:  func(c *Config) { c.ModulesDir, c.Modules = mods, []string{"a"} },
			want: []string{"/lib/modules/" + kver, "escapes"}},
		{name: "lib absolute symlink with modules", image: layout(layers(S("lib", hostDir)), nil),
			mut:  func(c *Config) { c.ModulesDir, c.Modules = mods, []string{"a"} },
			want: []string{"/lib/modules", "escapes"}},
		{name: "layer blob digest", image: layout(good, overwrite("layer", ocitest.Gzip(ocitest.Tar(F("etc/motd", "evil", 0o644))))),
			want: []string{"layer 2 (", "digest mismatch", "layer blob"}},
		{name: "manifest digest", image: layout(good, overwrite("manifest", []byte(`{"schemaVersion":2,"layers":[]}`))),
			want: []string{"digest mismatch", "blobs/sha256/"}},
		{name: "config digest", image: layout(good, overwrite("config", []byte(`{"architecture":"amd64","os":"linux","rootfs":{"diff_ids":[]}}`))),
			want: []string{"image config", "digest mismatch"}},
		{name: "diff_id mismatch", image: layout(ocitest.Image{Layers: good.Layers, Gzip: true, DiffIDs: []string{ocitest.Digest(good.Layers[0]), ocitest.Digest([]byte("other"))}}, nil),
			want: []string{"layer 2 (", "digest mismatch", "diff_id"}},
		{name: "docker layer vs diff_id", image: docker(good, func(w ocitest.Written) map[string][]byte {
			return map[string][]byte{w.Layers[1]: ocitest.Tar(F("etc/motd", "evil", 0o644))}
		}), want: []string{"layer 2 (", "digest mismatch", "diff_id"}},
		{name: "docker config digest", image: docker(good, func(w ocitest.Written) map[string][]byte {
			return map[string][]byte{w.Config: []byte(`{"architecture":"amd64","os":"linux","rootfs":{"diff_ids":[]}}`)}
		}), want: []string{"image config", "digest mismatch"}},
		{name: "wrong-platform index", image: layout(ocitest.Image{Layers: good.Layers, Arch: "s390x"}, nil),
			want: []string{"no manifest for platform linux/", "it has linux/s390x", "--platform"}},
		{name: "config for another platform", image: layout(ocitest.Image{Layers: good.Layers, Arch: "s390x", IndexArch: "amd64"}, nil),
			want: []string{"is for platform linux/s390x"}},
		{name: "sparse bomb", image: layout(ocitest.Image{Layers: [][]byte{sparseLayer(t, 1<<40)}, Gzip: true}, nil),
			want: []string{"layer 1 (", `entry "bomb"`, "per-file limit"}},
		{name: "over-cap unpacked size", image: layout(ocitest.Image{Layers: [][]byte{sparseLayer(t, 64<<20)}, Gzip: true}, nil),
			mut:  func(c *Config) { c.MaxUnpackedSize = 32 << 20 },
			want: []string{"layer 1 (", `entry "bomb"`, "--max-unpacked-size"}},
		{name: "over-cap file count", image: layout(layers(E("a"), E("b"), E("c"), E("d"), E("e")), nil),
			mut:  func(c *Config) { c.MaxFiles = 4 },
			want: []string{"layer 2 (", `entry "c"`, "--max-files"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := c.image(t)
			for _, output := range []string{OutputImage, OutputInitrd, OutputDir} {
				outDir := t.TempDir()
				cfg := Config{Recipe: "oci", Options: optsAgent(), Output: output, FS: image.Ext4, Out: filepath.Join(outDir, "artifact")}
				cfg.OCI = src
				if c.mut != nil {
					c.mut(&cfg)
				}
				_, err := Run(context.Background(), cfg)
				if err == nil {
					t.Fatalf("%s: hostile image accepted", output)
				}
				if output == OutputImage {
					t.Log(err)
				}
				for _, w := range c.want {
					if !strings.Contains(err.Error(), w) {
						t.Fatalf("%s: error %q does not mention %q", output, err, w)
					}
				}
				if ents, _ := os.ReadDir(outDir); len(ents) != 0 {
					t.Fatalf("%s: output left after failure: %v", output, ents)
				}
				if after := hashTree(t, host); after != before {
					t.Fatalf("%s: the host tree outside the staging directory changed", output)
				}
				if testing.Short() {
					break
				}
			}
		})
	}
}

// TestTrickyButHarmlessImages: absolute symlinks are valid image content
// (the guest resolves them in its own root) and must neither be refused
// nor followed on the host: an image whose /lib, /dev and /tmp point at a
// host directory builds, and the host tree is unchanged.
func TestTrickyButHarmlessImages(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs")
	base := t.TempDir()
	host := filepath.Join(base, "host")
	os.MkdirAll(host, 0o755)
	os.WriteFile(filepath.Join(host, "file"), []byte("x"), 0o644)
	before := hashTree(t, host)
	d := t.TempDir()
	layer := ocitest.Tar(ocitest.Symlink("lib", host), ocitest.Symlink("dev", host), ocitest.Symlink("tmp", host),
		ocitest.Entry{Hdr: tar.Header{Name: "etc/x", Typeflag: tar.TypeReg, Mode: 0o644}, Body: "x"})
	if _, err := ocitest.WriteLayout(d, ocitest.Image{Layers: [][]byte{layer}}); err != nil {
		t.Fatal(err)
	}
	for _, output := range []string{OutputImage, OutputDir} {
		out := filepath.Join(t.TempDir(), "artifact")
		cfg := Config{Recipe: "oci", Options: optsAgent(), Output: output, FS: image.Ext4, Out: out}
		cfg.OCI = d
		if _, err := Run(context.Background(), cfg); err != nil {
			t.Fatalf("%s: %v", output, err)
		}
		if after := hashTree(t, host); after != before {
			t.Fatalf("%s: host tree changed", output)
		}
		if output == OutputDir {
			if l, err := os.Readlink(filepath.Join(out, "lib")); err != nil || l != host {
				t.Fatalf("lib symlink %q %v", l, err)
			}
		}
	}
}
