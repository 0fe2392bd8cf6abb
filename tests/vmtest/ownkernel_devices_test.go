package vmtest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keelvm/keel/kernel-config/kbuild"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/vmm/hotplug"
	"github.com/keelvm/keel/tests/vmm/qemu"
)

// ownKernel returns Keel's built kernel (vmlinux when cached, it boots
// faster through PVH) or skips: CI builds it first (make kernel).
func ownKernel(ctx context.Context, t *testing.T) string {
	t.Helper()
	k, err := kbuild.DefaultBuilt(ctx, "x86_64")
	if errors.Is(err, kbuild.ErrNotBuilt) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if k.Vmlinux != "" {
		return k.Vmlinux
	}
	return k.BzImage
}

// bootOwnKernel boots Keel's kernel (every driver built in, so the
// initramfs holds no modules) with the busybox initramfs and creates a
// sandbox.
func bootOwnKernel(ctx context.Context, t *testing.T, kernel string, rootPorts int, appendArgs []string, tweak func(*qemu.Config)) *devGuest {
	t.Helper()
	g, err := Boot(ctx, Config{
		Kernel:  kernel,
		Busybox: true,
		Modules: []string{},
		Log:     testWriter{t},
		Append:  appendArgs,
		QEMU: func(c *qemu.Config) {
			c.PCIeRootPorts = rootPorts
			if tweak != nil {
				tweak(c)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	c, err := g.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Agent.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: "ownkernel", Hostname: "ownkernel"}); err != nil {
		t.Fatal(err)
	}
	return &devGuest{g: g, c: c, p: hotplug.New(g.VM.QMP(), rootPorts), dir: t.TempDir()}
}

// TestOwnKernelDevices checks on Keel's own kernel what Debian's could
// not show: memory added by probe (ARCH_MEMORY_PROBE) in a guest that
// ignores ACPI memory notifications, VFIO behind the emulated Intel
// IOMMU, and VFIO's no-IOMMU mode (VFIO_NOIOMMU). Two guests: an IOMMU
// and the no-IOMMU mode exclude each other.
func TestOwnKernelDevices(t *testing.T) {
	if why := Available(); why != "" {
		t.Skip(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	kernel := ownKernel(ctx, t)

	t.Run("iommu", func(t *testing.T) {
		// acpi_no_memhotplug: the guest's ACPI memory driver does not
		// add hot-plugged DIMMs, like guests whose VMM sends no ACPI
		// notification; only the probe makes them appear.
		d := bootOwnKernel(ctx, t, kernel, 2, []string{"intel_iommu=on", "acpi_no_memhotplug"}, func(c *qemu.Config) {
			c.HotplugSlots = 2
			c.MaxMemMiB = 2048
			c.ExtraArgs = append(c.ExtraArgs, "-device", "intel-iommu,intremap=off")
		})
		w := startWatch(ctx, t, d.c)
		t.Run("memory_probe", func(t *testing.T) { testMemoryProbe(ctx, t, d, w) })
		t.Run("vfio", func(t *testing.T) { testVFIO(ctx, t, d) })
	})
	t.Run("noiommu", func(t *testing.T) {
		d := bootOwnKernel(ctx, t, kernel, 1, []string{"vfio.enable_unsafe_noiommu_mode=1"}, nil)
		testVFIONoIOMMU(ctx, t, d)
	})
}

// memBlocks counts the guest's memory blocks and the offline ones, read in
// a container.
func (d *devGuest) memBlocks(ctx context.Context, t *testing.T) (all, offline int) {
	t.Helper()
	out := d.sh(ctx, t, "ls -d /sys/devices/system/memory/memory* | wc -l; cat /sys/devices/system/memory/memory*/state | grep -c offline || true")
	f := strings.Fields(out)
	if len(f) != 2 {
		t.Fatalf("memory blocks: %q", out)
	}
	all, _ = strconv.Atoi(f[0])
	offline, _ = strconv.Atoi(f[1])
	return all, offline
}

// testMemoryProbe follows Kata's runtime in a guest without ACPI memory
// hotplug: device_add a DIMM, read its address from QEMU, send
// MemHotplugByProbe with one address per memory block (the block size
// from GetGuestDetails), then OnlineCPUMem. The DIMM must stay invisible
// until the probe, and be usable by containers after it.
func testMemoryProbe(ctx context.Context, t *testing.T, d *devGuest, w *watch) {
	const sizeMiB = 256
	det, err := d.c.Agent.GetGuestDetails(ctx, &pb.GuestDetailsRequest{MemBlockSize: true, MemHotplugProbe: true})
	if err != nil {
		t.Fatal(err)
	}
	if !det.SupportMemHotplugProbe || det.MemBlockSizeBytes == 0 {
		t.Fatalf("GetGuestDetails: support_mem_hotplug_probe %v, mem_block_size_bytes %d", det.SupportMemHotplugProbe, det.MemBlockSizeBytes)
	}
	blocksBefore, _ := d.memBlocks(ctx, t)
	_, memBefore, _, err := w.until(ctx, func(int, int64) bool { return true })
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	dimm, err := d.p.AddDIMM(ctx, sizeMiB)
	if err != nil {
		t.Fatal(err)
	}
	added := time.Since(start)
	md, err := d.p.DIMM(ctx, dimm.ID)
	if err != nil {
		t.Fatal(err)
	}
	// Give the ACPI notification time to be (not) acted on: hot-added
	// memory blocks appeared within 0.3 s in the ACPI-driven test.
	time.Sleep(1500 * time.Millisecond)
	if blocks, _ := d.memBlocks(ctx, t); blocks != blocksBefore {
		t.Fatalf("the DIMM appeared without a probe: %d -> %d memory blocks", blocksBefore, blocks)
	}
	if _, mem, _, _ := w.until(ctx, func(int, int64) bool { return true }); mem != memBefore {
		t.Fatalf("MemTotal changed before the probe: %d -> %d kB", memBefore, mem)
	}

	var addrs []uint64
	for off := uint64(0); off < md.Size; off += det.MemBlockSizeBytes {
		addrs = append(addrs, md.Addr+off)
	}
	probeStart := time.Now()
	if _, err := d.c.Agent.MemHotplugByProbe(ctx, &pb.MemHotplugByProbeRequest{MemHotplugProbeAddr: addrs}); err != nil {
		t.Fatal(err)
	}
	probed := time.Since(probeStart)
	if _, err := d.c.Agent.OnlineCPUMem(ctx, &pb.OnlineCPUMemRequest{}); err != nil {
		t.Fatal(err)
	}
	onlined := time.Since(probeStart)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, memAfter, seen, err := w.until(wctx, func(_ int, mem int64) bool { return mem-memBefore >= sizeMiB<<10 })
	if err != nil {
		t.Fatalf("MemTotal %d -> %d kB after the probe: %v", memBefore, memAfter, err)
	}
	if memAfter-memBefore != sizeMiB<<10 {
		t.Errorf("MemTotal %d -> %d kB, want +%d kB", memBefore, memAfter, sizeMiB<<10)
	}
	blocks, offline := d.memBlocks(ctx, t)
	if blocks != blocksBefore+len(addrs) || offline != 0 {
		t.Errorf("memory blocks %d -> %d (%d offline), want +%d all online", blocksBefore, blocks, offline, len(addrs))
	}
	t.Logf("DIMM %d MiB at %#x (block size %#x, %d probe addresses): object-add+device_add %v; MemHotplugByProbe %v; +OnlineCPUMem %v; MemTotal +%d kB in a container %v after the probe RPC was sent",
		sizeMiB, md.Addr, det.MemBlockSizeBytes, len(addrs), added.Round(time.Millisecond), probed.Round(time.Millisecond),
		onlined.Round(time.Millisecond), memAfter-memBefore, seen.Sub(probeStart).Round(time.Millisecond))

	// A runtime retrying the same request: the blocks are known, nothing
	// is added twice.
	if _, err := d.c.Agent.MemHotplugByProbe(ctx, &pb.MemHotplugByProbeRequest{MemHotplugProbeAddr: addrs}); err != nil {
		t.Errorf("repeated probe: %v", err)
	}
	if b, _ := d.memBlocks(ctx, t); b != blocks {
		t.Errorf("repeated probe: %d -> %d memory blocks", blocks, b)
	}
	_, err = d.c.Agent.MemHotplugByProbe(ctx, &pb.MemHotplugByProbeRequest{MemHotplugProbeAddr: []uint64{md.Addr + md.Size + 4096}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "memHotplugProbeAddr[0]") {
		t.Errorf("unaligned address: %v", err)
	}
}

// testVFIONoIOMMU: without an IOMMU, vfio.enable_unsafe_noiommu_mode=1
// lets vfio-pci take a function anyway; its group is
// /dev/vfio/noiommu-<N>, which the agent puts in the container in place
// of the host's group. The kernel lets only CAP_SYS_RAWIO open such a
// group (no DMA isolation): the agent grants nothing, the spec decides.
func testVFIONoIOMMU(ctx context.Context, t *testing.T, d *devGuest) {
	pciPath := d.hotAdd(ctx, t, "virtio-rng-pci", nil)
	script := `g=$(ls /dev/vfio/ | grep -v '^vfio$'); echo "node $g $(stat -c '%F' /dev/vfio/$g)"; ` +
		`n=$(basename $(readlink /sys/bus/pci/devices/$PCIDEVICE_KEEL_COM_RNG/iommu_group)); echo "group $n $(cat /sys/kernel/iommu_groups/$n/name)"; ` +
		`readlink /sys/bus/pci/devices/$PCIDEVICE_KEEL_COM_RNG/driver; ` +
		`if (exec 3<>/dev/vfio/$g); then echo opened; else echo refused; fi`
	run := func(caps ...string) []string {
		req := withDevice("/dev/vfio/99", "c", 511, 99, &pb.Device{Type: "vfio-pci", Id: "99", ContainerPath: "/dev/vfio/99", Options: []string{"0000:3b:00.0=" + pciPath}})
		tweak := func(r *pb.CreateContainerRequest) {
			r.OCI.Process.Env = append(r.OCI.Process.Env, "PCIDEVICE_KEEL_COM_RNG=0000:3b:00.0")
			c := r.OCI.Process.Capabilities
			c.Bounding = append(c.Bounding, caps...)
			c.Effective = append(c.Effective, caps...)
			c.Permitted = append(c.Permitted, caps...)
		}
		out := d.sh(ctx, t, script+" 2>&1", req, tweak)
		t.Logf("no-IOMMU vfio-pci at %s, caps +%v, container saw:\n%s", pciPath, caps, out)
		return strings.Split(strings.TrimSpace(out), "\n")
	}
	check := func(lines []string, last string) {
		t.Helper()
		if len(lines) < 4 {
			t.Fatalf("container saw %q", lines)
		}
		node := strings.Fields(lines[0])
		if len(node) < 2 || !strings.HasPrefix(node[1], "noiommu-") || !strings.HasSuffix(lines[0], "character special file") {
			t.Errorf("group node %q, want /dev/vfio/noiommu-<N>", lines[0])
		}
		if lines[1] != fmt.Sprintf("group %s vfio-noiommu", strings.TrimPrefix(node[1], "noiommu-")) {
			t.Errorf("IOMMU group %q, want the vfio-noiommu group of %s", lines[1], node[1])
		}
		if !strings.HasSuffix(lines[2], "/vfio-pci") {
			t.Errorf("driver %q, want vfio-pci", lines[2])
		}
		if lines[len(lines)-1] != last {
			t.Errorf("open: %q, want %q", lines[len(lines)-1], last)
		}
	}
	check(run(), "refused")
	check(run("CAP_SYS_RAWIO"), "opened")
}
