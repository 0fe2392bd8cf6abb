package kmod

import (
	"bytes"
	"compress/gzip"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeTree builds a modules dir: nd_pmem -> nd_btt, libnvdimm; nd_btt ->
// libnvdimm; ext4 -> crc16 (xz) ; virtio-pmem -> libnvdimm.
func fakeTree(t *testing.T) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), "6.1.0-test")
	put := func(rel string, data []byte) {
		p := filepath.Join(d, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	put("kernel/drivers/nvdimm/libnvdimm.ko", []byte("LIBNVDIMM"))
	put("kernel/drivers/nvdimm/nd_btt.ko", []byte("BTT"))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("PMEM"))
	zw.Close()
	put("kernel/drivers/nvdimm/nd_pmem.ko.gz", gz.Bytes())
	put("kernel/drivers/nvdimm/virtio_pmem.ko", []byte("VPMEM"))
	put("kernel/fs/ext4/ext4.ko", []byte("EXT4"))
	if xz, err := exec.LookPath("xz"); err == nil {
		cmd := exec.Command(xz, "-c")
		cmd.Stdin = strings.NewReader("CRC16")
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		put("kernel/lib/crc16.ko.xz", out)
	} else {
		t.Skip("xz not installed")
	}
	put("modules.dep", []byte(`kernel/drivers/nvdimm/libnvdimm.ko:
kernel/drivers/nvdimm/nd_btt.ko: kernel/drivers/nvdimm/libnvdimm.ko
kernel/drivers/nvdimm/nd_pmem.ko.gz: kernel/drivers/nvdimm/nd_btt.ko kernel/drivers/nvdimm/libnvdimm.ko
kernel/drivers/nvdimm/virtio_pmem.ko: kernel/drivers/nvdimm/libnvdimm.ko
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko.xz
kernel/lib/crc16.ko.xz:
`))
	return d
}

func TestResolveOrder(t *testing.T) {
	d := fakeTree(t)
	mods, err := Resolve(d, []string{"nd-pmem", "virtio_pmem", "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range mods {
		names = append(names, m.Name)
	}
	want := "crc16 ext4 libnvdimm nd_btt nd_pmem virtio_pmem"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("order %q, want %q", got, want)
	}
	if _, err := Resolve(d, []string{"zfs"}); err == nil || !strings.Contains(err.Error(), `"zfs" not found`) {
		t.Fatalf("err = %v", err)
	}
}

func TestInstall(t *testing.T) {
	d := fakeTree(t)
	mods, err := Resolve(d, []string{"nd_pmem", "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	kver, err := Install(context.Background(), root, d, mods)
	if err != nil {
		t.Fatal(err)
	}
	if kver != "6.1.0-test" {
		t.Fatalf("kver %s", kver)
	}
	base := filepath.Join(root, "lib/modules", kver)
	for rel, want := range map[string]string{
		"kernel/drivers/nvdimm/nd_pmem.ko": "PMEM",
		"kernel/lib/crc16.ko":              "CRC16",
		"kernel/fs/ext4/ext4.ko":           "EXT4",
	} {
		if b, err := os.ReadFile(filepath.Join(base, rel)); err != nil || string(b) != want {
			t.Errorf("%s: %q %v", rel, b, err)
		}
	}
	dep, _ := os.ReadFile(filepath.Join(base, "modules.dep"))
	if !strings.Contains(string(dep), "kernel/drivers/nvdimm/nd_pmem.ko: kernel/drivers/nvdimm/nd_btt.ko kernel/drivers/nvdimm/libnvdimm.ko\n") ||
		strings.Contains(string(dep), "virtio_pmem") || strings.Contains(string(dep), ".xz") {
		t.Errorf("pruned modules.dep:\n%s", dep)
	}
	load, _ := os.ReadFile(filepath.Join(base, "modules.load"))
	if string(load) != "kernel/lib/crc16.ko\nkernel/fs/ext4/ext4.ko\nkernel/drivers/nvdimm/libnvdimm.ko\nkernel/drivers/nvdimm/nd_btt.ko\nkernel/drivers/nvdimm/nd_pmem.ko\n" {
		t.Errorf("modules.load:\n%s", load)
	}
}

func TestParseDepRejects(t *testing.T) {
	for _, in := range []string{"no colon here\n", "/abs.ko:\n", "a.ko: ../../x.ko\n"} {
		if _, err := ParseDep(strings.NewReader(in)); err == nil {
			t.Errorf("ParseDep(%q) accepted", in)
		}
	}
}

func FuzzParseDep(f *testing.F) {
	f.Add("a.ko: b.ko c.ko\nb.ko:\n")
	f.Add("x")
	f.Fuzz(func(t *testing.T, s string) {
		deps, err := ParseDep(strings.NewReader(s))
		if err != nil {
			return
		}
		for m, ds := range deps {
			for _, p := range append(ds, m) {
				if strings.HasPrefix(p, "/") || strings.Contains("/"+p+"/", "/../") {
					t.Fatalf("unsafe path %q accepted", p)
				}
			}
		}
	})
}
