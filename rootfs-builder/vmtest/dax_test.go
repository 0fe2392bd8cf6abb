package vmtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/rootfs-builder/build"
	"github.com/keelvm/keel/rootfs-builder/cpio"
	"github.com/keelvm/keel/rootfs-builder/image"
	"github.com/keelvm/keel/rootfs-builder/pfn"
	"github.com/keelvm/keel/tests/vmm/guestkernel"
	"github.com/keelvm/keel/tests/vmm/qemu"
)

// stand-in agent: any static binary works for a mount test.
const busybox = "/bin/busybox"

// buildInit compiles testdata/init as a static binary.
func buildInit(ctx context.Context, t *testing.T) string {
	return buildGo(ctx, t, "./testdata/init")
}

// buildGo compiles the command pkg as a static linux/amd64 binary.
func buildGo(ctx context.Context, t *testing.T, pkg string) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	cmd := exec.CommandContext(ctx, gobin, "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("building %s: %v: %s", pkg, err, stderr.String())
	}
	return out
}

func buildImage(ctx context.Context, t *testing.T, fs image.FS, dax bool) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), fmt.Sprintf("%s-dax%v.img", fs, dax))
	_, err := build.Run(ctx, build.Config{
		Recipe: "minimal", Output: build.OutputImage, FS: fs, DAX: dax, Out: out, Epoch: 1234567,
		Options: build.RecipeOptions{Agent: busybox},
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// pmemModeImage wraps a bare image with a PFN_MODE_PMEM info block, whose
// struct pages live on the device between 8 KiB and dataoff (18 MiB for a
// 1 GiB filesystem).
func pmemModeImage(ctx context.Context, t *testing.T, fs image.FS, size int64) string {
	return wrapped(ctx, t, fs, size, pfn.ModePMEM)
}

// ramModeImage is the default layout on a filesystem larger than what a
// 2 MiB dataoff could describe in pmem mode (~127 MiB).
func ramModeImage(ctx context.Context, t *testing.T, size int64) string {
	return wrapped(ctx, t, image.Ext4, size, pfn.ModeRAM)
}

func wrapped(ctx context.Context, t *testing.T, fs image.FS, size int64, mode pfn.Mode) string {
	t.Helper()
	dir := t.TempDir()
	stage := filepath.Join(dir, "stage")
	if _, err := build.Run(ctx, build.Config{Recipe: "minimal", Output: build.OutputDir, Out: stage, Epoch: 1234567,
		Options: build.RecipeOptions{Agent: busybox}}); err != nil {
		t.Fatal(err)
	}
	bare := filepath.Join(dir, "bare.img")
	if _, err := image.Build(ctx, stage, bare, image.Spec{FS: fs, Size: size, Epoch: 1234567}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "wrapped.img")
	blk, err := pfn.Wrap(bare, out, pfn.Options{Mode: mode})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s %s-mode image: dataoff %#x npfns %d", fs, mode, blk.DataOff, blk.NPFNs)
	return out
}

// TestDAXImagesOnNVDIMM boots one VM with read-only nvdimm devices: ext4
// and erofs images built with --dax, the same wrapped in pmem mode, a 1 GiB
// ext4 in each mode, and a bare ext4 image as the negative control. All
// but the last must mount with dax=always and report STATX_ATTR_DAX on
// /sbin/init; the bare one must refuse DAX.
func TestDAXImagesOnNVDIMM(t *testing.T) {
	if testing.Short() {
		t.Skip("VM test skipped in -short mode")
	}
	if !qemu.Available() {
		t.Skip("qemu-system-x86_64 not installed")
	}
	if _, err := os.Stat(busybox); err != nil {
		t.Skip("busybox-static not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	k, err := guestkernel.Ensure(ctx)
	if err != nil {
		t.Fatal(err)
	}
	initBin := buildInit(ctx, t)
	images := []string{
		buildImage(ctx, t, image.Ext4, true),
		buildImage(ctx, t, image.EROFS, true),
		buildImage(ctx, t, image.Ext4, false),
		pmemModeImage(ctx, t, image.EROFS, 0),
		pmemModeImage(ctx, t, image.Ext4, 1<<30),
		ramModeImage(ctx, t, 1<<30),
	}

	mods, err := k.ModulesFor("nfit", "nd_pmem", "ext4", "crc32c_generic", "erofs")
	if err != nil {
		t.Fatal(err)
	}
	staging := t.TempDir()
	paths, err := k.InstallModules(ctx, staging, mods)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := cpio.TreeEntries(staging)
	if err != nil {
		t.Fatal(err)
	}
	entries = append(entries,
		cpio.File("init", initBin, 0o755),
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.Bytes("etc/vmtest/modules", []byte(strings.Join(paths, "\n")+"\n"), 0o644),
		cpio.Bytes("etc/vmtest/devices", []byte(fmt.Sprintf("%d\n", len(images))), 0o644),
	)
	initrd := filepath.Join(t.TempDir(), "initrd.gz")
	if err := cpio.BuildInitrd(initrd, entries, cpio.Gzip, cpio.Options{}); err != nil {
		t.Fatal(err)
	}

	var pmem []qemu.PmemDevice
	for _, img := range images {
		pmem = append(pmem, qemu.PmemDevice{Path: img, Kind: qemu.NVDIMM, ReadOnly: true})
	}
	start := time.Now()
	vm, err := qemu.Launch(ctx, qemu.Config{
		Kernel: k.VmlinuzPath,
		Initrd: initrd,
		Append: "console=ttyS0 panic=-1 quiet",
		Pmem:   pmem,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := vm.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if t.Failed() {
			t.Logf("serial console:\n%s", vm.SerialLog())
		}
	})
	if err := vm.WaitSerial(ctx, "VMTEST-DONE"); err != nil {
		t.Fatal(err)
	}
	t.Logf("guest finished %v after QEMU start", time.Since(start).Round(time.Millisecond))
	log := vm.SerialLog()
	if strings.Contains(log, "VMTEST-ERROR") {
		t.Fatalf("guest error:\n%s", log)
	}
	st, err := os.Stat(busybox)
	if err != nil {
		t.Fatal(err)
	}
	// Device numbers follow probe order, so match results by content:
	// ext4 --dax, ext4 1 GiB pmem mode, ext4 1 GiB ram mode; erofs --dax,
	// erofs pmem mode.
	for want, n := range map[string]int{
		fmt.Sprintf(" ext4 dax=true init_size=%d init_link=sbin/init mtime=1234567", st.Size()):  3,
		fmt.Sprintf(" erofs dax=true init_size=%d init_link=sbin/init mtime=1234567", st.Size()): 2,
	} {
		if got := strings.Count(log, want); got != n {
			t.Errorf("serial log has %d VMTEST-MOUNT lines ending %q, want %d", got, want, n)
		}
	}
	// The bare ext4 image (no PFN info block) is raw mode: no DAX.
	var nodax []string
	noDAXDev := ""
	for _, l := range strings.Split(log, "\n") {
		l = strings.TrimSpace(l)
		if rest, ok := strings.CutPrefix(l, "VMTEST-NODAX "); ok {
			nodax = append(nodax, rest)
			noDAXDev, _, _ = strings.Cut(rest, " ")
		}
	}
	if len(nodax) != 1 || !strings.HasSuffix(nodax[0], " ext4") {
		t.Errorf("VMTEST-NODAX lines %q, want exactly one ext4 device (the image without --dax)", nodax)
	}
	if !strings.Contains(log, "DAX unsupported by block device") {
		t.Errorf("kernel did not refuse DAX on the bare image")
	}
	if strings.Contains(log, "VMTEST-FAIL") {
		t.Errorf("a device failed to mount")
	}
	for _, l := range strings.Split(log, "\n") {
		l = strings.TrimSpace(l)
		if rest, ok := strings.CutPrefix(l, "VMTEST-PROCMOUNT "); ok {
			t.Log(rest)
			if !strings.HasPrefix(rest, "/dev/"+noDAXDev+" ") && !strings.Contains(rest, "dax=always") {
				t.Errorf("DAX image mounted without dax: %s", rest)
			}
		}
	}
}
