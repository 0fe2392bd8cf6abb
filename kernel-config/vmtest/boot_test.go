package vmtest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/kernel-config/fragments"
	"github.com/keelvm/keel/kernel-config/kbuild"
	"github.com/keelvm/keel/kernel-config/source"
	"github.com/keelvm/keel/rootfs-builder/pfn"
	"github.com/keelvm/keel/tests/vmm/qemu"
)

// builtKernel returns $KEEL_KERNEL_IMAGE or the cached build of the default
// x86_64 fragments, skipping the test when there is none.
func builtKernel(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("KEEL_KERNEL_IMAGE"); p != "" {
		return p
	}
	ctx := context.Background()
	version, err := source.InstalledVersion(ctx, source.DefaultPackage)
	if err != nil {
		t.Skipf("no built kernel: %v", err)
	}
	frags, err := fragments.Select(fragments.DefaultSpec("x86_64"))
	if err != nil {
		t.Fatal(err)
	}
	digest, err := kbuild.Digest(kbuild.Options{
		Source:    &source.Tree{Package: source.DefaultPackage, Version: version},
		Arch:      "x86_64",
		Fragments: frags,
	})
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(kbuild.DefaultCache, digest, "bzImage")
	if _, err := os.Stat(img); err != nil {
		t.Skipf("kernel not built yet (go run ./cmd/keel-kernel build): %v", err)
	}
	return img
}

// rootImage builds a 16 MiB ext4 image (4 KiB blocks, which DAX needs)
// holding only the static test init.
func rootImage(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("mke2fs"); err != nil {
		t.Skip("mke2fs not installed")
	}
	dir := t.TempDir()
	tree := filepath.Join(dir, "root")
	for _, d := range []string{"proc", "dev", "sys"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	build := exec.Command("go", "build", "-o", filepath.Join(tree, "init"), "./testdata/init")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build init: %v\n%s", err, out)
	}
	img := filepath.Join(dir, "root.ext4")
	mk := exec.Command("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-d", tree, img, "16M")
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v\n%s", err, out)
	}
	return img
}

func TestBootFromDAXRoot(t *testing.T) {
	if testing.Short() {
		t.Skip("boots QEMU")
	}
	if !qemu.Available() {
		t.Skip("QEMU not installed")
	}
	kernel := builtKernel(t)
	ext4 := rootImage(t)
	nvdimmImg := filepath.Join(t.TempDir(), "root.nvdimm")
	if _, err := pfn.Wrap(ext4, nvdimmImg, pfn.Options{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		dev  qemu.PmemDevice
	}{
		{"virtio-pmem", qemu.PmemDevice{Path: ext4, Kind: qemu.VirtioPmem, ReadOnly: true}},
		{"nvdimm", qemu.PmemDevice{Path: nvdimmImg, Kind: qemu.NVDIMM, ReadOnly: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			start := time.Now()
			vm, err := qemu.Launch(ctx, qemu.Config{
				Kernel: kernel,
				Append: "console=ttyS0 panic=-1 root=/dev/pmem0 rootfstype=ext4 rootflags=dax ro init=/init",
				Pmem:   []qemu.PmemDevice{tc.dev},
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				vm.Close()
				if t.Failed() {
					t.Logf("serial console:\n%s", vm.SerialLog())
				}
			})
			if err := vm.WaitSerial(ctx, "KEEL-BOOT-DONE"); err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			log := vm.SerialLog()
			if !strings.Contains(log, "KEEL-BOOT-ROOT /dev/root ext4 ro,") || !strings.Contains(log, "dax") {
				t.Errorf("root is not a read-only ext4 DAX mount:\n%s", grep(log, "KEEL-BOOT-ROOT"))
			}
			if !strings.Contains(log, "KEEL-BOOT-DONE missing=0") {
				t.Errorf("required options missing in the running kernel:\n%s", grep(log, "KEEL-BOOT-"))
			}
			t.Logf("%s: init reported after %s: %s", tc.name, took.Round(time.Millisecond), grep(log, "KEEL-BOOT-ROOT"))
		})
	}
}

func grep(log, prefix string) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, prefix) {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return strings.Join(out, "\n")
}
