package vmbench

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/keelvm/keel/agent/container/containertest"
	"github.com/keelvm/keel/kernel-config/kbuild"
	"github.com/keelvm/keel/rootfs-builder/build"
	"github.com/keelvm/keel/rootfs-builder/image"
	"github.com/keelvm/keel/tests/vmtest"
)

// EnvVM is the opt-in flag of the VM tier: each benchmark boots guests
// under QEMU TCG (seconds each), so `make bench` leaves them out.
const EnvVM = "KEEL_BENCH_VM"

// needVM skips unless the VM tier was asked for and can run here.
func needVM(tb testing.TB) {
	tb.Helper()
	if os.Getenv(EnvVM) != "1" {
		tb.Skipf("VM benchmarks boot QEMU guests (TCG, seconds each): set %s=1 (make bench-vm)", EnvVM)
	}
	if why := vmtest.Available(); why != "" {
		tb.Skip(why)
	}
}

// keelKernel is Keel's own kernel as `make kernel` cached it, the
// uncompressed vmlinux when there is one (PVH entry, no decompressor).
func keelKernel(tb testing.TB, ctx context.Context) string {
	tb.Helper()
	k, err := kbuild.DefaultBuilt(ctx, "x86_64")
	if errors.Is(err, kbuild.ErrNotBuilt) {
		tb.Skipf("Keel's kernel is not built (make kernel): %v", err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	if k.Vmlinux != "" {
		return k.Vmlinux
	}
	return k.BzImage
}

// buildStatic builds ./testdata/<name> as a static Go binary (no cgo) in dir.
func buildStatic(tb testing.TB, dir, name string) string {
	tb.Helper()
	return buildInit(tb, dir, name, name, "")
}

// agentBuildFlags are the Makefile's AGENT_TAGS and AGENT_LINKFLAGS: a
// testdata program built with them is linked like keel-agent (cgo, static
// glibc).
var agentBuildFlags = []string{"-tags", "netgo,osusergo,seccomp", "-ldflags", "-s -w -linkmode external -extldflags -static"}

// buildInit builds ./testdata/<name> as the static binary dir/<out>: with
// tags "" pure Go (no cgo), else linked like keel-agent (agentBuildFlags)
// with those build tags added.
func buildInit(tb testing.TB, dir, name, out, tags string) string {
	tb.Helper()
	bin := filepath.Join(dir, out)
	args := []string{"build", "-trimpath", "-ldflags", "-s -w"}
	cgo := "CGO_ENABLED=0"
	if tags != "" {
		args = []string{"build", "-trimpath", "-tags", agentBuildFlags[1] + "," + tags, agentBuildFlags[2], agentBuildFlags[3]}
		cgo = "CGO_ENABLED=1"
	}
	cmd := exec.Command("go", append(args, "-o", bin, "./testdata/"+name)...)
	cmd.Env = append(os.Environ(), cgo)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("unable to build %s (tags %q): %v: %s", name, tags, err, out)
	}
	return bin
}

// ContainerRootfs is where DAX images carry a busybox container rootfs.
const ContainerRootfs = "/containers/busybox/rootfs"

// daxImage builds what `keel-rootfs build --recipe minimal --dax` builds
// with init as /sbin/init (the agent, or the trivial init: installed the
// same way), as an ext4 image behind the NVDIMM PFN block, so it boots on
// nvdimm and on virtio-pmem. With container set, a busybox container rootfs
// is added at ContainerRootfs, with the files of extra (path inside that
// rootfs -> host file) copied in.
func daxImage(tb testing.TB, ctx context.Context, dir, init string, container bool, extra map[string]string) string {
	tb.Helper()
	tree := filepath.Join(dir, "tree")
	opts := build.RecipeOptions{Agent: init}
	if container {
		opts.Busybox = vmtest.BusyboxPath
	}
	if _, err := build.Run(ctx, build.Config{Recipe: "minimal", Output: build.OutputDir, Out: tree, Options: opts}); err != nil {
		tb.Fatalf("minimal recipe: %v", err)
	}
	defer os.RemoveAll(tree)
	if container {
		cr := filepath.Join(tree, ContainerRootfs)
		if err := containertest.MakeRootfs(cr); err != nil {
			tb.Fatal(err)
		}
		for dst, src := range extra {
			b, err := os.ReadFile(src)
			if err != nil {
				tb.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(cr, dst), b, 0o755); err != nil {
				tb.Fatal(err)
			}
		}
	}
	img := filepath.Join(dir, filepath.Base(init)+"-dax.ext4")
	if _, err := image.Build(ctx, tree, img, image.Spec{FS: image.Ext4, DAX: true}); err != nil {
		tb.Fatalf("DAX image: %v", err)
	}
	return img
}
