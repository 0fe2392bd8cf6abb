package daxtest

import (
	"context"
	"github.com/keelvm/keel/agent/container/containertest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/protocol/client"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/rootfs-builder/build"
	"github.com/keelvm/keel/rootfs-builder/image"
	"github.com/keelvm/keel/tests/vmm/qemu"
	"github.com/keelvm/keel/tests/vmtest"
)

// Where the test image carries its busybox container and the big file the
// workload reads.
const (
	containerRootfs = "/containers/busybox/rootfs"
	bigFile         = "/data/big"
	bigFileSize     = 32 << 20
)

// workload prints the guest's meminfo, reads every file of the container
// rootfs and the big file twice, prints meminfo again and the mount table
// of the container (whose / is a directory of the pmem root).
const workload = `cat /proc/meminfo
find / -xdev -type f -exec cat {} + >/dev/null
cat ` + bigFile + ` >/dev/null; cat ` + bigFile + ` >/dev/null
echo @@; cat /proc/meminfo; echo @@; cat /proc/self/mountinfo`

func skipUnlessVM(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("VM test skipped in -short mode")
	}
	if why := vmtest.Available(); why != "" {
		t.Skip(why)
	}
}

// buildDAXImage builds the minimal recipe (agent as /sbin/init, busybox)
// with a busybox container rootfs and a 32 MiB random file inside, as a
// DAX-capable image (PFN info block, filesystem at 2 MiB).
func buildDAXImage(ctx context.Context, t *testing.T, agent string, fs image.FS) string {
	t.Helper()
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if _, err := build.Run(ctx, build.Config{
		Recipe: "minimal", Output: build.OutputDir, Out: tree, Epoch: 1700000000,
		Options: build.RecipeOptions{Agent: agent, Busybox: BusyboxPath},
	}); err != nil {
		t.Fatal(err)
	}
	cr := filepath.Join(tree, containerRootfs)
	if err := containertest.MakeRootfs(cr); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(cr, filepath.Dir(bigFile)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := WriteRandomFile(filepath.Join(cr, bigFile), bigFileSize); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "rootfs.img")
	res, err := image.Build(ctx, tree, img, image.Spec{FS: fs, DAX: true, Epoch: 1700000000})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(tree); err != nil {
		t.Fatal(err)
	}
	t.Logf("image %s: %d MiB, %s at %#x", img, res.Size>>20, fs, res.FSOffset)
	return img
}

// growth is what one workload run did to the guest's memory, in KiB.
type growth struct {
	baseCached                             int64 // Cached when the workload starts
	cached, fileLRU, memFree, memAvailable int64
	rootMount                              string
}

// measure boots a guest whose root is img on a read-only nvdimm (with
// rootflags added to the kernel command line) and runs the workload in a
// container on that root.
func measure(ctx context.Context, t *testing.T, img string, fs image.FS, rootflags string) growth {
	t.Helper()
	start := time.Now()
	app := []string{"agent.rootfs=/dev/pmem0", "rootfstype=" + string(fs)}
	if rootflags != "" {
		app = append(app, "rootflags="+rootflags)
	}
	g, err := vmtest.Boot(ctx, vmtest.Config{
		ExtraModules: NVDIMMModules,
		Append:       app,
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
	if _, err := c.Agent.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: "dax", Hostname: "dax"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	t0 := time.Now()
	out, _, status, err := vmtest.RunContainer(ctx, c.Agent, "reader", vmtest.BusyboxSpec(containerRootfs, "/bin/sh", "-c", workload))
	if err != nil {
		t.Fatal(err)
	}
	if status != 0 {
		t.Fatalf("workload exited %d:\n%s", status, out)
	}
	t.Logf("workload ran in %v; guest up %v after QEMU start", time.Since(t0).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	parts := strings.Split(out, "@@\n")
	if len(parts) != 3 {
		t.Fatalf("workload output has %d sections, want 3:\n%s", len(parts), out)
	}
	before, err := ParseMeminfo(parts[0])
	if err != nil {
		t.Fatal(err)
	}
	after, err := ParseMeminfo(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	gr := growth{
		baseCached:   before["Cached"],
		cached:       after["Cached"] - before["Cached"],
		memFree:      after["MemFree"] - before["MemFree"],
		fileLRU:      after.FileLRU() - before.FileLRU(),
		memAvailable: after["MemAvailable"] - before["MemAvailable"],
	}
	for _, l := range strings.Split(parts[2], "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == "/" {
			gr.rootMount = l
		}
	}
	t.Logf("MemTotal %d KiB; Cached %d -> %d KiB (%+d); file LRU %+d KiB; MemFree %+d KiB; MemAvailable %d -> %d KiB (%+d)",
		before["MemTotal"], before["Cached"], after["Cached"], gr.cached, gr.fileLRU, gr.memFree,
		before["MemAvailable"], after["MemAvailable"], gr.memAvailable)
	t.Logf("container root: %s", gr.rootMount)
	shutdown(ctx, t, g, c)
	return gr
}

// shutdown asks the agent to power the guest off and waits for QEMU.
func shutdown(ctx context.Context, t *testing.T, g *vmtest.Guest, c *client.Client) {
	t.Helper()
	if _, err := c.Agent.DestroySandbox(ctx, &pb.DestroySandboxRequest{}); err != nil {
		t.Errorf("DestroySandbox: %v", err)
		return
	}
	select {
	case <-g.VM.Done():
	case <-ctx.Done():
		t.Errorf("guest did not power off: %v", ctx.Err())
	}
}

// TestDAXKeepsImageOutOfPageCache boots the agent twice from one DAX-capable
// ext4 image on a read-only nvdimm — once with the agent's default
// (dax=always), once with rootflags=dax=never — and runs the same reader
// container on the pmem root. Reading ~34 MiB of files must grow the
// guest page cache by at least the big file without DAX and by less than a
// quarter of that with DAX. The two guests boot in parallel.
func TestDAXKeepsImageOutOfPageCache(t *testing.T) {
	comparePageCache(t, image.Ext4)
}

// TestDAXKeepsImageOutOfPageCacheEROFS is the same on erofs (slow tier:
// two more boots).
func TestDAXKeepsImageOutOfPageCacheEROFS(t *testing.T) {
	if os.Getenv("KEEL_SLOW_TESTS") == "" {
		t.Skip("slow tier: set KEEL_SLOW_TESTS=1")
	}
	comparePageCache(t, image.EROFS)
}

func comparePageCache(t *testing.T, fs image.FS) {
	skipUnlessVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	agent, err := vmtest.AgentBinary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	img := buildDAXImage(ctx, t, agent, fs)

	var dax, nodax growth
	t.Run("group", func(t *testing.T) {
		t.Run("dax=always", func(t *testing.T) {
			t.Parallel()
			dax = measure(ctx, t, img, fs, "")
			if !strings.Contains(dax.rootMount, "dax=always") {
				t.Errorf("container root is not on a dax=always mount: %q", dax.rootMount)
			}
		})
		t.Run("dax=never", func(t *testing.T) {
			t.Parallel()
			nodax = measure(ctx, t, img, fs, "dax=never")
			if strings.Contains(nodax.rootMount, "dax=always") {
				t.Errorf("dax=never root mounted with DAX: %q", nodax.rootMount)
			}
		})
	})
	if t.Failed() {
		return
	}
	t.Logf("%s: page cache growth reading the image: DAX %d KiB (file LRU %+d, MemFree %+d, MemAvailable %+d), no DAX %d KiB (file LRU %+d, MemFree %+d, MemAvailable %+d)",
		fs, dax.cached, dax.fileLRU, dax.memFree, dax.memAvailable, nodax.cached, nodax.fileLRU, nodax.memFree, nodax.memAvailable)
	t.Logf("%s: Cached when the workload starts (agent, booted from the image): DAX %d KiB, no DAX %d KiB", fs, dax.baseCached, nodax.baseCached)
	if nodax.cached < bigFileSize>>10 {
		t.Errorf("without DAX Cached grew by %d KiB, less than the %d KiB file read: the workload did not go through the page cache", nodax.cached, bigFileSize>>10)
	}
	if dax.cached*4 >= nodax.cached {
		t.Errorf("with DAX Cached grew by %d KiB, not < 1/4 of the %d KiB without", dax.cached, nodax.cached)
	}
	if dax.fileLRU*4 >= nodax.fileLRU {
		t.Errorf("with DAX the file LRU grew by %d KiB, not < 1/4 of the %d KiB without", dax.fileLRU, nodax.fileLRU)
	}
	// The agent itself runs from the image after switch_root: without DAX
	// its binary sits in the page cache too.
	if dax.baseCached*4 >= nodax.baseCached {
		t.Errorf("Cached at workload start: %d KiB with DAX, not < 1/4 of the %d KiB without", dax.baseCached, nodax.baseCached)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
