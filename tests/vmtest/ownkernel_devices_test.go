package vmtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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
func bootOwnKernel(ctx context.Context, t *testing.T, kernel string, rootPorts int, appendArgs []string, files map[string]string, tweak func(*qemu.Config)) *devGuest {
	t.Helper()
	g, err := Boot(ctx, Config{
		Kernel:  kernel,
		Busybox: true,
		Modules: []string{},
		Files:   files,
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
		// The vIOMMU runs with intremap=off (on, the TCG guest panics in
		// its timer check), so without interrupt remapping vfio's type1
		// model refuses groups (EPERM) unless told the platform's MSIs
		// are acceptable.
		// Also device-mapper (built into Keel's kernel): create_filesystem
		// runs the guest image's mkfs.ext4, copied in from the host.
		d := bootOwnKernel(ctx, t, kernel, 7, []string{"intel_iommu=on", "acpi_no_memhotplug", "vfio_iommu_type1.allow_unsafe_interrupts=1"},
			hostTool(t, "mkfs.ext4", "usr/sbin/mkfs.ext4"), func(c *qemu.Config) {
				c.HotplugSlots = 2
				c.MaxMemMiB = 2048
				c.ExtraArgs = append(c.ExtraArgs, "-device", "intel-iommu,intremap=off")
			})
		w := startWatch(ctx, t, d.c)
		t.Run("memory_probe", func(t *testing.T) { testMemoryProbe(ctx, t, d, w) })
		t.Run("vfio", func(t *testing.T) { testVFIO(ctx, t, d) })
		t.Run("vfio_use", func(t *testing.T) {
			pciPath := d.hotAdd(ctx, t, "virtio-rng-pci", nil)
			out := d.vfioUse(ctx, t, "type1", pciPath)
			if len(out) != 4 || out[0] != "api 0" || out[1] != "viable" || !virtioRNG(out[2]) || out[3] != "dma mapped 65536" {
				t.Errorf("vfioprobe in the container: %q", out)
			}
		})
		t.Run("dm_crypt", func(t *testing.T) { testEphemeralEncryptedDisk(ctx, t, d.c.Agent, d.p, d.dir) })
		t.Run("dm_verity", func(t *testing.T) { testMultiLayerErofs(ctx, t, d.c.Agent, d.p, d.dir) })
	})
	t.Run("noiommu", func(t *testing.T) {
		// Also a cgroup v1 guest with room for a second vCPU, for the
		// cpuset refresh after OnlineCPUMem.
		d := bootOwnKernel(ctx, t, kernel, 1, []string{"vfio.enable_unsafe_noiommu_mode=1", "agent.cgroup=v1"}, nil, func(c *qemu.Config) {
			c.ExtraArgs = append(c.ExtraArgs, "-smp", "1,maxcpus=2")
		})
		t.Run("vfio", func(t *testing.T) { testVFIONoIOMMU(ctx, t, d) })
		t.Run("cpuset_v1", func(t *testing.T) { testCPUSetV1(ctx, t, d) })
		t.Run("exe_sealed", func(t *testing.T) { exeSealed(ctx, t, d.c.Agent) })
	})
	t.Run("mmio", func(t *testing.T) {
		// Firecracker-style disks: virtio-blk on virtio-mmio transports
		// (QEMU's microvm), attached before boot.
		dir := t.TempDir()
		raw := diskImage(t, dir, "mmio-raw.img", 8<<20, "keel-mmio-disk-marker")
		fs := mmioExt4(t, dir)
		// microvm has no HPET or ACPI PM timer and TCG no kvm-clock:
		// Keel's kernel cannot calibrate the TSC and would hang at boot
		// without its frequency and a loops_per_jiffy given.
		d := bootOwnKernel(ctx, t, kernel, 0, []string{"tsc_early_khz=2000000", "lpj=4000000"}, nil, func(c *qemu.Config) {
			c.Machine = "microvm,pcie=on"
			c.ExtraArgs = append(c.ExtraArgs,
				"-drive", "file="+raw+",if=none,id=mmio0,format=raw,readonly=on", "-device", "virtio-blk-device,drive=mmio0",
				"-drive", "file="+fs+",if=none,id=mmio1,format=raw", "-device", "virtio-blk-device,drive=mmio1")
		})
		testMmioBlk(ctx, t, d)
	})
}

// mmioExt4 makes an ext4 image holding /hello.
func mmioExt4(t *testing.T, dir string) string {
	t.Helper()
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "hello"), []byte("written on the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := diskImage(t, dir, "mmio-ext4.img", 16<<20, "")
	run(t, "mkfs.ext4", "-q", "-F", "-d", src, img)
	return img
}

// testMmioBlk: the two virtio-mmio disks are /dev/vda and /dev/vdb in the
// guest (their order on the command line). "mmioblk" hands the first to a
// container by vm_path with the guest's numbers; an "mmioblk" storage
// mounts the second, which a container reads and writes through a bind.
func testMmioBlk(ctx context.Context, t *testing.T, d *devGuest) {
	out := d.sh(ctx, t, "stat -c '%t:%T %F' /dev/xvdm; head -c 21 /dev/xvdm; echo; readlink -f /sys/block/vda",
		withDevice("/dev/xvdm", "b", 253, 77, &pb.Device{Type: "mmioblk", VmPath: "/dev/vda", ContainerPath: "/dev/xvdm"}))
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasSuffix(lines[0], " block special file") || strings.HasPrefix(lines[0], "fd:4d") ||
		lines[1] != "keel-mmio-disk-marker" || strings.Contains(lines[2], "/pci") || !strings.Contains(lines[2], "virtio") {
		t.Errorf("container saw %q, want the marker through the guest's numbers of a disk off PCI", out)
	}
	t.Logf("mmioblk device: %q", lines)

	const mp = "/run/kata-containers/sandbox/storage/mmio1"
	vol := func(r *pb.CreateContainerRequest) {
		r.Storages = append(r.Storages, &pb.Storage{Driver: "mmioblk", Source: "/dev/vdb", Fstype: "ext4", MountPoint: mp})
		r.OCI.Mounts = append(r.OCI.Mounts, &pb.Mount{Destination: "/data", Type: "bind", Source: mp, Options: []string{"rbind", "rw"}})
	}
	out = d.sh(ctx, t, "cat /data/hello; echo from-container > /data/back; cat /data/back; grep ' /data ' /proc/mounts | cut -d' ' -f1,3", vol)
	if out != "written on the host\nfrom-container\n/dev/vdb ext4\n" {
		t.Errorf("mmioblk storage: container saw %q", out)
	}
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
	// The no-IOMMU model has no DMA mapping: config space is what a
	// container can show it reaches.
	if out := d.vfioUse(ctx, t, "noiommu", pciPath, "CAP_SYS_RAWIO"); len(out) != 3 || out[0] != "api 0" || out[1] != "viable" || !virtioRNG(out[2]) {
		t.Errorf("vfioprobe in the container: %q", out)
	}
}

// virtioRNG says whether a vfioprobe id line names virtio-rng (modern
// 1044, or transitional 1005).
func virtioRNG(line string) bool {
	return line == "vendor 1af4 device 1044" || line == "vendor 1af4 device 1005"
}

// probeDir is where the guest holds vfioprobe (CopyFile's root), bound
// into containers at /opt/probe.
const probeDir = "/run/kata-containers/shared/containers/vfioprobe"

// installVFIOProbe builds tests/vmtest/vfioprobe (static) and copies it
// into the guest with CopyFile, once per guest.
func (d *devGuest) installVFIOProbe(ctx context.Context, t *testing.T) {
	t.Helper()
	if d.probe {
		return
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "vfioprobe")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./tests/vmtest/vfioprobe")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build vfioprobe: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	const chunk = 1 << 20
	for off := 0; off < len(data); off += chunk {
		if _, err := d.c.Agent.CopyFile(ctx, &pb.CopyFileRequest{
			Path: probeDir + "/vfioprobe", FileSize: int64(len(data)), FileMode: unix.S_IFREG | 0o755, DirMode: unix.S_IFDIR | 0o755,
			Offset: int64(off), Data: data[off:min(off+chunk, len(data))],
		}); err != nil {
			t.Fatalf("CopyFile vfioprobe: %v", err)
		}
	}
	d.probe = true
}

// vfioUse passes the function at pciPath as "vfio-pci" to a container
// that also has /dev/vfio/vfio and caps, and runs vfioprobe model there on
// the group the agent gave it; it returns vfioprobe's lines.
func (d *devGuest) vfioUse(ctx context.Context, t *testing.T, model, pciPath string, caps ...string) []string {
	t.Helper()
	d.installVFIOProbe(ctx, t)
	req := withDevice("/dev/vfio/97", "c", 511, 97, &pb.Device{Type: "vfio-pci", Id: "97", ContainerPath: "/dev/vfio/97", Options: []string{"0000:3c:00.0=" + pciPath}})
	tweak := func(r *pb.CreateContainerRequest) {
		r.OCI.Process.Env = append(r.OCI.Process.Env, "PCIDEVICE_KEEL_COM_RNG=0000:3c:00.0")
		// The VFIO container node has the same numbers everywhere.
		r.OCI.Linux.Devices = append(r.OCI.Linux.Devices, &pb.LinuxDevice{Path: "/dev/vfio/vfio", Type: "c", Major: 10, Minor: 196, FileMode: 0o666})
		r.OCI.Linux.Resources.Devices = append(r.OCI.Linux.Resources.Devices, &pb.LinuxDeviceCgroup{Allow: true, Type: "c", Major: 10, Minor: 196, Access: "rw"})
		r.OCI.Mounts = append(r.OCI.Mounts, &pb.Mount{Destination: "/opt/probe", Type: "bind", Source: probeDir, Options: []string{"rbind", "ro"}})
		c := r.OCI.Process.Capabilities
		c.Bounding = append(c.Bounding, caps...)
		c.Effective = append(c.Effective, caps...)
		c.Permitted = append(c.Permitted, caps...)
	}
	out := d.sh(ctx, t, `g=$(ls /dev/vfio/ | grep -v '^vfio$'); exec /opt/probe/vfioprobe `+model+` /dev/vfio/$g $PCIDEVICE_KEEL_COM_RNG`, req, tweak)
	t.Logf("vfioprobe %s on the function at %s, in a container:\n%s", model, pciPath, out)
	return strings.Split(strings.TrimSpace(out), "\n")
}

// testCPUSetV1: in a cgroup v1 guest a container created with one CPU
// online has cpuset "0"; after a vCPU is hot-added and OnlineCPUMem
// onlines it, the container's running init may use both CPUs (its cpuset
// and its parents' were widened), read through an exec in the container.
func testCPUSetV1(ctx context.Context, t *testing.T, d *devGuest) {
	if out := d.sh(ctx, t, "grep -c ':cpuset:' /proc/self/cgroup"); out != "1\n" {
		t.Fatalf("not a cgroup v1 guest: %q", out)
	}
	const id = "cpusetheld"
	if _, err := d.c.Agent.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: id, ExecId: id, OCI: BusyboxSpec(ContainerRootfs, "/bin/sleep", "600")}); err != nil {
		t.Fatal(err)
	}
	defer d.c.Agent.RemoveContainer(context.Background(), &pb.RemoveContainerRequest{ContainerId: id})
	if _, err := d.c.Agent.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	n := 0
	allowed := func() string {
		t.Helper()
		n++
		execID := fmt.Sprintf("exec%d", n)
		p := BusyboxSpec(ContainerRootfs, "/bin/sh", "-c", "sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/1/status").Process
		if _, err := d.c.Agent.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: id, ExecId: execID, Process: p}); err != nil {
			t.Fatal(err)
		}
		out, err := readStream(ctx, d.c.Agent.ReadStdout, id, execID)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.c.Agent.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: id, ExecId: execID}); err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	if a := allowed(); a != "0" {
		t.Fatalf("before the hotplug the container may run on %q, want 0", a)
	}
	start := time.Now()
	if _, err := d.p.AddCPU(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.Agent.OnlineCPUMem(ctx, &pb.OnlineCPUMemRequest{NbCpus: 2, CpuOnly: true}); err != nil {
		t.Fatal(err)
	}
	rpc := time.Since(start)
	if a := allowed(); a != "0-1" {
		t.Errorf("after OnlineCPUMem the container created with one CPU may run on %q, want 0-1", a)
	}
	t.Logf("vCPU on a cgroup v1 guest: OnlineCPUMem (with the cpuset refresh) returned %v after device_add; the container's init may use CPUs 0-1 %v after device_add",
		rpc.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}
