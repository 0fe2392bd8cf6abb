package guestkernel

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fakeModule returns a minimal ELF64 relocatable object whose only
// content is a .modinfo section holding the given key=value strings.
func fakeModule(t *testing.T, kv ...string) []byte {
	t.Helper()
	return fakeELF(t, 1, ".modinfo", 1, []byte(strings.Join(kv, "\x00")+"\x00"))
}

// fakeELF returns an x86-64 ELF64 file of the given e_type with one section
// (name, sh_type, data) besides the section name table.
func fakeELF(t *testing.T, etype uint16, name string, stype uint32, data []byte) []byte {
	t.Helper()
	shstr := []byte("\x00.shstrtab\x00" + name + "\x00")
	const ehsize, shentsize = 64, 64
	shoff := ehsize + len(shstr) + len(data)
	var b bytes.Buffer
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	hdr := struct {
		Type, Machine              uint16
		Version                    uint32
		Entry, Phoff, Shoff        uint64
		Flags                      uint32
		Ehsize, Phentsize, Phnum   uint16
		Shentsize, Shnum, Shstrndx uint16
	}{etype, 62, 1, 0, 0, uint64(shoff), 0, ehsize, 0, 0, shentsize, 3, 1}
	must(t, binary.Write(&b, binary.LittleEndian, hdr))
	b.Write(shstr)
	b.Write(data)
	type shdr struct {
		Name, Type             uint32
		Flags, Addr, Off, Size uint64
		Link, Info             uint32
		Addralign, Entsize     uint64
	}
	for _, s := range []shdr{
		{},
		{Name: 1, Type: 3, Off: ehsize, Size: uint64(len(shstr)), Addralign: 1},
		{Name: 11, Type: stype, Flags: 2, Off: uint64(ehsize + len(shstr)), Size: uint64(len(data)), Addralign: 1},
	} {
		must(t, binary.Write(&b, binary.LittleEndian, s))
	}
	return b.Bytes()
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, p string, b []byte) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(t, os.WriteFile(p, b, 0o644))
}

func gz(t *testing.T, b []byte) []byte {
	var out bytes.Buffer
	w := gzip.NewWriter(&out)
	_, err := w.Write(b)
	must(t, err)
	must(t, w.Close())
	return out.Bytes()
}

// fakeTree builds lib/modules/<ver> with:
// top -> mid, leaf-dash (gz), zmod (zst if zstd exists); mid -> leaf-dash.
func fakeTree(t *testing.T) (*Kernel, map[string][]byte) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "lib", "modules", "9.9.9-test")
	raw := map[string][]byte{
		"top":       fakeModule(t, "license=GPL", "depends=mid,zmod", "name=top"),
		"mid":       fakeModule(t, "depends=leaf_dash", "name=mid"),
		"leaf_dash": fakeModule(t, "depends=", "name=leaf_dash"),
		"zmod":      fakeModule(t, "name=zmod"),
	}
	writeFile(t, filepath.Join(dir, "kernel/a/top.ko"), raw["top"])
	writeFile(t, filepath.Join(dir, "kernel/b/mid.ko"), raw["mid"])
	writeFile(t, filepath.Join(dir, "kernel/c/leaf-dash.ko.gz"), gz(t, raw["leaf_dash"]))
	zp := filepath.Join(dir, "kernel/d/zmod.ko")
	writeFile(t, zp, raw["zmod"])
	if _, err := exec.LookPath("zstd"); err == nil {
		must(t, exec.Command("zstd", "-q", "--rm", zp).Run())
	}
	writeFile(t, filepath.Join(dir, "modules.builtin"), []byte("kernel/drivers/dax/dax.ko\n"))
	return &Kernel{Version: "9.9.9-test", ModulesDir: dir}, raw
}

func TestGenerateResolveInstall(t *testing.T) {
	k, raw := fakeTree(t)
	must(t, GenerateModulesDep(k.ModulesDir))
	dep, err := os.ReadFile(filepath.Join(k.ModulesDir, "modules.dep"))
	must(t, err)
	zrel := "kernel/d/zmod.ko"
	if _, err := os.Stat(filepath.Join(k.ModulesDir, zrel+".zst")); err == nil {
		zrel += ".zst"
	}
	wantTop := "kernel/a/top.ko: " + zrel + " kernel/b/mid.ko kernel/c/leaf-dash.ko.gz"
	if !strings.Contains(string(dep), wantTop+"\n") {
		t.Fatalf("modules.dep lacks %q:\n%s", wantTop, dep)
	}

	mods, err := k.ModulesFor("top", "dax", "mid")
	must(t, err)
	var names []string
	for _, m := range mods {
		names = append(names, m.Name)
	}
	if want := []string{"leaf_dash", "mid", "zmod", "top"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("load order = %v, want %v", names, want)
	}

	if _, err := k.ModulesFor("top", "nosuch", "other-missing"); err == nil ||
		!strings.Contains(err.Error(), `"nosuch", "other-missing"`) {
		t.Fatalf("unknown modules: err = %v", err)
	}

	root := t.TempDir()
	paths, err := k.InstallModules(context.Background(), root, mods)
	must(t, err)
	want := []string{
		"/lib/modules/9.9.9-test/kernel/c/leaf-dash.ko",
		"/lib/modules/9.9.9-test/kernel/b/mid.ko",
		"/lib/modules/9.9.9-test/kernel/d/zmod.ko",
		"/lib/modules/9.9.9-test/kernel/a/top.ko",
	}
	if !reflect.DeepEqual(paths, want) {
		t.Fatalf("guest paths = %v, want %v", paths, want)
	}
	for i, name := range []string{"leaf_dash", "mid", "zmod", "top"} {
		got, err := os.ReadFile(filepath.Join(root, paths[i]))
		must(t, err)
		if !bytes.Equal(got, raw[name]) {
			t.Errorf("%s: installed content differs from the uncompressed module", name)
		}
	}
	pruned, err := os.ReadFile(filepath.Join(root, "lib/modules/9.9.9-test/modules.dep"))
	must(t, err)
	if !strings.Contains(string(pruned), "kernel/a/top.ko: kernel/d/zmod.ko kernel/b/mid.ko kernel/c/leaf-dash.ko\n") {
		t.Fatalf("pruned modules.dep:\n%s", pruned)
	}
	if _, err := os.Stat(filepath.Join(root, "lib/modules/9.9.9-test/modules.builtin")); err != nil {
		t.Fatal(err)
	}
}

func TestInstallRollsBack(t *testing.T) {
	k, _ := fakeTree(t)
	must(t, GenerateModulesDep(k.ModulesDir))
	mods, err := k.ModulesFor("mid")
	must(t, err)
	mods = append(mods, Module{Name: "gone", Src: "kernel/x/gone.ko", Dst: "kernel/x/gone.ko"})
	root := t.TempDir()
	if _, err := k.InstallModules(context.Background(), root, mods); err == nil {
		t.Fatal("InstallModules with a missing file succeeded")
	}
	ents, err := os.ReadDir(root)
	must(t, err)
	if len(ents) != 0 {
		t.Fatalf("rollback left %d entries in the target root (%s...)", len(ents), ents[0].Name())
	}
}

func TestGenerateMissingDependency(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "kernel/a.ko"), fakeModule(t, "name=a", "depends=ghost"))
	if err := GenerateModulesDep(dir); err == nil || !strings.Contains(err.Error(), "ghost") {
		t.Fatalf("err = %v, want missing dependency ghost", err)
	}
	writeFile(t, filepath.Join(dir, "kernel/a.ko"), []byte("not an ELF file"))
	if err := GenerateModulesDep(dir); err == nil {
		t.Fatal("garbage module accepted")
	}
}

func TestBadModulesDep(t *testing.T) {
	for name, dep := range map[string]string{
		"cycle":    "a.ko: b.ko\nb.ko: a.ko\n",
		"escape":   "../../etc/passwd.ko:\n",
		"nocolon":  "a.ko b.ko\n",
		"dangling": "a.ko: zz.ko\n",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, filepath.Join(dir, "modules.dep"), []byte(dep))
			k := &Kernel{Version: "x", ModulesDir: dir}
			if mods, err := k.ModulesFor("a", "passwd"); err == nil {
				t.Fatalf("ModulesFor succeeded: %v", mods)
			}
		})
	}
}

func TestNormalizeName(t *testing.T) {
	for in, want := range map[string]string{
		"virtio-pci":             "virtio_pci",
		"kernel/fs/ext4/ext4.ko": "ext4",
		"crc32c-intel.ko.zst":    "crc32c_intel",
		"9pnet_virtio.ko.xz":     "9pnet_virtio",
		"kernel/lib/crc16.ko.gz": "crc16",
	} {
		if got := NormalizeName(in); got != want {
			t.Errorf("NormalizeName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseDepends(t *testing.T) {
	pkg, ver, err := parseDepends([]byte("Package: linux-image-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\nDescription: x\n"))
	must(t, err)
	if pkg != "linux-image-6.1.0-56-amd64" || ver != "6.1.192-2" {
		t.Fatalf("got %q %q", pkg, ver)
	}
	if _, _, err := parseDepends([]byte("Package: linux-image-amd64\nDepends: foo\n")); err == nil {
		t.Fatal("unversioned dependency accepted")
	}
}

func TestLockExcludes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lock")
	unlock, err := lockFile(context.Background(), p)
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := lockFile(ctx, p); err == nil {
		t.Fatal("second lock acquired while the first is held")
	}
	got := make(chan error, 1)
	go func() {
		u, err := lockFile(context.Background(), p)
		if err == nil {
			u()
		}
		got <- err
	}()
	time.Sleep(150 * time.Millisecond)
	unlock()
	select {
	case err := <-got:
		must(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("waiter did not get the lock after release")
	}
}
