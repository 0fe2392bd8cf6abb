package daxtest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/rootfs-builder/build"
	"github.com/keelvm/keel/rootfs-builder/image"
	"github.com/keelvm/keel/rootfs-builder/recipe"
	"github.com/keelvm/keel/tests/vmm/qemu"
	"github.com/keelvm/keel/tests/vmtest"
)

const debianRootfs = "/containers/debian/rootfs"

// TestDebianContainerOnDAXRoot builds a DAX erofs image whose root is the
// minimal recipe (the agent) and whose /containers/debian/rootfs is the
// debian recipe's bookworm tree, boots the agent onto it from a read-only
// nvdimm and runs Debian's perl in a container on that tree. Slow tier:
// set KEEL_SLOW_TESTS=1 (the first run bootstraps Debian into
// /var/cache/keel).
func TestDebianContainerOnDAXRoot(t *testing.T) {
	if os.Getenv("KEEL_SLOW_TESTS") == "" {
		t.Skip("slow tier: set KEEL_SLOW_TESTS=1")
	}
	skipUnlessVM(t)
	_, errM := exec.LookPath("mmdebstrap")
	_, errD := exec.LookPath("debootstrap")
	if errM != nil && errD != nil {
		t.Skip("neither mmdebstrap nor debootstrap installed")
	}
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Skip("mkfs.erofs not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	agent, err := vmtest.AgentBinary(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// The image root is the minimal recipe; the Debian tree is built
	// straight into a directory of it (build.Run stages next to Out and
	// renames), so the container's root.path is a plain directory.
	start := time.Now()
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if _, err := build.Run(ctx, build.Config{
		Recipe: "minimal", Output: build.OutputDir, Out: tree, Epoch: 1700000000,
		Options: build.RecipeOptions{Agent: agent},
	}); err != nil {
		t.Fatal(err)
	}
	deb := filepath.Join(tree, debianRootfs)
	if err := os.MkdirAll(filepath.Dir(deb), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := build.Run(ctx, build.Config{
		Recipe: "debian", Output: build.OutputDir, Out: deb, Epoch: 1700000000,
		Options: build.RecipeOptions{Agent: agent, CacheDir: recipe.DefaultCacheDir, Progress: t.Logf},
	}); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "debian.img")
	res, err := image.Build(ctx, tree, img, image.Spec{FS: image.EROFS, DAX: true, Epoch: 1700000000})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(tree); err != nil {
		t.Fatal(err)
	}
	t.Logf("debian DAX erofs image: %d MiB (filesystem %d MiB at %#x), built in %v",
		res.Size>>20, res.FSSize>>20, res.FSOffset, time.Since(start).Round(100*time.Millisecond))

	boot := time.Now()
	g, err := vmtest.Boot(ctx, vmtest.Config{
		ExtraModules: NVDIMMModules,
		Append:       []string{"agent.rootfs=/dev/pmem0", "rootfstype=erofs"},
		Pmem:         []qemu.PmemDevice{{Path: img, Kind: qemu.NVDIMM, ReadOnly: true}},
		Log:          testWriter{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("serial console (tail):\n%s", tail(g.VM.SerialLog(), 60))
		}
		if err := g.Close(); err != nil {
			t.Errorf("closing the guest: %v", err)
		}
	}()
	c, err := g.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Agent.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: "debian", Hostname: "debian"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	t0 := time.Now()
	out, _, status, err := vmtest.RunContainer(ctx, c.Agent, "perl", vmtest.BusyboxSpec(debianRootfs, "/bin/sh", "-c",
		`/usr/bin/perl -e 'print 6*7'; echo; cat /proc/self/mountinfo`))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("container ran in %v (guest up %v after QEMU start)", time.Since(t0).Round(time.Millisecond), time.Since(boot).Round(time.Millisecond))
	if status != 0 {
		t.Fatalf("container exited %d:\n%s", status, out)
	}
	perl, mountinfo, _ := strings.Cut(out, "\n")
	t.Logf("/usr/bin/perl -e 'print 6*7' printed %q", perl)
	if perl != "42" {
		t.Errorf("perl printed %q, want 42", perl)
	}
	root := ""
	for _, l := range strings.Split(mountinfo, "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == "/" {
			root = l
		}
	}
	t.Logf("container root: %s", root)
	if !strings.Contains(root, " - erofs /dev/pmem0 ") || !strings.Contains(root, "dax=always") {
		t.Errorf("container root is not the erofs pmem root with dax=always:\n%s", mountinfo)
	}
	shutdown(ctx, t, g, c)
}
