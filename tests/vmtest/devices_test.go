package vmtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keelvm/keel/protocol/client"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/vmm/hotplug"
	"github.com/keelvm/keel/tests/vmm/qemu"
)

// devGuest is the one guest the device and hotplug subtests share.
type devGuest struct {
	g   *Guest
	c   *client.Client
	p   *hotplug.Plugger
	n   atomic.Int32
	dir string
	// probe: vfioprobe was copied into the guest (installVFIOProbe).
	probe bool
}

// sh runs script in a fresh busybox container (with /sys mounted
// read-only, as runc's default spec) and returns its stdout; a non-zero
// exit fails the test with stderr.
func (d *devGuest) sh(ctx context.Context, t *testing.T, script string, tweak ...func(*pb.CreateContainerRequest)) string {
	t.Helper()
	id := fmt.Sprintf("sh%d", d.n.Add(1))
	req := &pb.CreateContainerRequest{ContainerId: id, ExecId: id, OCI: BusyboxSpec(ContainerRootfs, "/bin/sh", "-c", script)}
	for _, f := range tweak {
		f(req)
	}
	out, errOut, code, err := RunContainerRequest(ctx, d.c.Agent, req)
	if err != nil {
		t.Fatalf("container %q: %v", script, err)
	}
	if code != 0 {
		t.Fatalf("container %q: exit %d, stderr %q, stdout %q", script, code, errOut, out)
	}
	return out
}

// diskImage writes a raw disk image of size bytes that starts with marker.
func diskImage(t *testing.T, dir, name string, size int64, marker string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(marker); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}

// rootPorts is how many PCIe root ports the devices guest has for hotplug.
const rootPorts = 6

// TestDevicesAndHotplug boots one guest (Debian's kernel, q35 with an
// emulated Intel IOMMU, room for one more vCPU and for DIMMs, PCIe root
// ports) and checks, from inside containers, what the device and hotplug
// RPCs promise. It logs device_add -> usable latencies under TCG.
func TestDevicesAndHotplug(t *testing.T) {
	if why := Available(); why != "" {
		t.Skip(why)
	}
	// About 15 containers under TCG: ~1 min on an idle machine, several
	// on a loaded one.
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	dir := t.TempDir()
	swapDisk := diskImage(t, dir, "swap.img", 32<<20, "")
	run(t, "mkswap", swapDisk)
	markDisk := diskImage(t, dir, "mark.img", 8<<20, "keel-cold-disk-marker")

	g, err := Boot(ctx, Config{
		Busybox:      true,
		Log:          testWriter{t},
		ExtraModules: []string{"virtio_blk", "virtio_scsi", "sd_mod", "vfio_pci", "ext4", "crc32c_generic"},
		Append:       []string{"intel_iommu=on"},
		QEMU: func(c *qemu.Config) {
			c.Drives = []qemu.Drive{{Path: swapDisk}, {Path: markDisk, ReadOnly: true}}
			c.PCIeRootPorts = rootPorts
			c.HotplugSlots = 4
			c.MaxMemMiB = 2048
			// Kata's runtime starts the sandbox with its one virtio-scsi
			// controller and hot-adds disks onto it.
			c.ExtraArgs = append(c.ExtraArgs, "-smp", "1,maxcpus=2", "-device", "intel-iommu,intremap=off", "-device", "virtio-scsi-pci,id=scsi0")
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	c, err := g.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Agent.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: "devices", Hostname: "devices"}); err != nil {
		t.Fatal(err)
	}
	d := &devGuest{g: g, c: c, p: hotplug.New(g.VM.QMP(), rootPorts), dir: dir}
	w := startWatch(ctx, t, c)

	t.Run("cpu", func(t *testing.T) { testHotplugCPU(ctx, t, d, w) })
	t.Run("memory", func(t *testing.T) { testHotplugMemory(ctx, t, d, w) })
	t.Run("swap_path", func(t *testing.T) { testSwapPath(ctx, t, d) })
	t.Run("blk_pci", func(t *testing.T) { testBlkPCI(ctx, t, d) })
	t.Run("scsi", func(t *testing.T) { testSCSI(ctx, t, d) })
	t.Run("swap_pci", func(t *testing.T) { testSwapPCI(ctx, t, d) })
	t.Run("vfio", func(t *testing.T) { testVFIO(ctx, t, d) })
	t.Run("volume_resize", func(t *testing.T) { testVolumeResize(ctx, t, d) })
}

// testVolumeResize: an ext4 disk hot-added as a "blk" storage backs a
// container volume; the VMM grows the disk (QMP block_resize) and
// ResizeVolume grows the mounted filesystem online, which GetVolumeStats
// and df inside a container both see.
func testVolumeResize(ctx context.Context, t *testing.T, d *devGuest) {
	img := diskImage(t, d.dir, "vol.img", 32<<20, "")
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", img)
	d.blockdevAdd(ctx, t, "vol1", img)
	pciPath := d.hotAdd(ctx, t, "virtio-blk-pci", map[string]any{"drive": "vol1"})
	const mp = "/run/kata-containers/sandbox/storage/vol1"
	vol := func(r *pb.CreateContainerRequest) {
		r.Storages = append(r.Storages, &pb.Storage{Driver: "blk", Source: pciPath, Fstype: "ext4", MountPoint: mp})
		r.OCI.Mounts = append(r.OCI.Mounts, &pb.Mount{Destination: "/data", Type: "bind", Source: mp, Options: []string{"rbind", "rw"}})
	}
	// The holder keeps the storage mounted across the other containers.
	holder := &pb.CreateContainerRequest{ContainerId: "volholder", ExecId: "volholder", OCI: BusyboxSpec(ContainerRootfs, "/bin/sh", "-c", "echo kept > /data/file; sleep 600")}
	vol(holder)
	if _, err := d.c.Agent.CreateContainer(ctx, holder); err != nil {
		t.Fatal(err)
	}
	defer d.c.Agent.RemoveContainer(context.Background(), &pb.RemoveContainerRequest{ContainerId: "volholder"})
	if _, err := d.c.Agent.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "volholder"}); err != nil {
		t.Fatal(err)
	}
	stats := func() *pb.VolumeUsage {
		r, err := d.c.Agent.GetVolumeStats(ctx, &pb.VolumeStatsRequest{VolumeGuestPath: mp})
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Usage) != 2 || r.Usage[0].Unit != pb.VolumeUsage_BYTES || r.Usage[1].Unit != pb.VolumeUsage_INODES || r.Usage[1].Used == 0 {
			t.Fatalf("GetVolumeStats %v", r)
		}
		return r.Usage[0]
	}
	dfKiB := func() int64 {
		out := strings.Fields(d.sh(ctx, t, "df -k /data | tail -1; cat /data/file", vol))
		if len(out) < 7 || out[6] != "kept" {
			t.Fatalf("df in the container: %q", out)
		}
		n, err := strconv.ParseInt(out[1], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before, dfBefore := stats(), dfKiB()
	if err := d.g.VM.QMP().Execute(ctx, "block_resize", map[string]any{"node-name": "vol1", "size": 64 << 20}, nil); err != nil {
		t.Fatal(err)
	}
	// The guest learns the new capacity from virtio's config change.
	var err error
	for i := 0; i < 50; i++ {
		if _, err = d.c.Agent.ResizeVolume(ctx, &pb.ResizeVolumeRequest{VolumeGuestPath: mp}); err == nil {
			if stats().Total > before.Total+16<<20 {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	after, dfAfter := stats(), dfKiB()
	if after.Total < before.Total+30<<20 || dfAfter < dfBefore+30<<10 {
		t.Errorf("capacity %d -> %d bytes (GetVolumeStats), %d -> %d KiB (df in a container); want +~32 MiB", before.Total, after.Total, dfBefore, dfAfter)
	}
	t.Logf("ext4 volume at PCI path %s grown online: GetVolumeStats %d -> %d bytes, container df %d -> %d KiB", pciPath, before.Total, after.Total, dfBefore, dfAfter)
	_, err = d.c.Agent.ResizeVolume(ctx, &pb.ResizeVolumeRequest{VolumeGuestPath: mp, Size: 16 << 20})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("shrink: %v", err)
	}
}

// hotAdd device_adds a PCI device into a free root port and returns the
// Kata PCI path the runtime would send ("SS/00").
func (d *devGuest) hotAdd(ctx context.Context, t *testing.T, driver string, props map[string]any) string {
	t.Helper()
	a, err := d.p.AddPCI(ctx, driver, props)
	if err != nil {
		t.Fatal(err)
	}
	return a.PCIPath
}

// blockdevAdd adds a raw image as a block node for device_add.
func (d *devGuest) blockdevAdd(ctx context.Context, t *testing.T, node, file string) {
	t.Helper()
	if err := d.g.VM.QMP().Execute(ctx, "blockdev-add", map[string]any{
		"node-name": node, "driver": "raw", "file": map[string]any{"driver": "file", "filename": file},
	}, nil); err != nil {
		t.Fatal(err)
	}
}

// withDevice adds a spec device entry with numbers no guest device has (as the
// host's would be).
func withDevice(path, typ string, major, minor int64, dev *pb.Device) func(*pb.CreateContainerRequest) {
	return func(r *pb.CreateContainerRequest) {
		r.OCI.Linux.Devices = append(r.OCI.Linux.Devices, &pb.LinuxDevice{Path: path, Type: typ, Major: major, Minor: minor, FileMode: 0o660})
		if r.OCI.Linux.Resources == nil {
			r.OCI.Linux.Resources = &pb.LinuxResources{}
		}
		r.OCI.Linux.Resources.Devices = append(r.OCI.Linux.Resources.Devices,
			&pb.LinuxDeviceCgroup{Allow: false, Access: "rwm", Major: -1, Minor: -1},
			&pb.LinuxDeviceCgroup{Allow: true, Type: typ, Major: major, Minor: minor, Access: "rw"})
		r.Devices = append(r.Devices, dev)
	}
}

// testBlkPCI: a disk hot-added into a root port and passed as a "blk"
// device by PCI path appears in the container with the guest's numbers
// and its bytes.
func testBlkPCI(ctx context.Context, t *testing.T, d *devGuest) {
	img := diskImage(t, d.dir, "blk.img", 16<<20, "keel-hotplug-blk-marker")
	start := time.Now()
	added, err := d.p.AddBlock(ctx, img, true)
	if err != nil {
		t.Fatal(err)
	}
	path := added.PCIPath
	out := d.sh(ctx, t, "stat -c '%t:%T %F' /dev/xvdc; head -c 23 /dev/xvdc; echo; cat /sys/dev/block/$((0x$(stat -c %t /dev/xvdc))):$((0x$(stat -c %T /dev/xvdc)))/size",
		withDevice("/dev/xvdc", "b", 253, 42, &pb.Device{Type: "blk", Id: path, VmPath: "/dev/vdz", ContainerPath: "/dev/xvdc"}))
	took := time.Since(start)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasSuffix(lines[0], " block special file") || strings.HasPrefix(lines[0], "fd:2a") ||
		lines[1] != "keel-hotplug-blk-marker" || lines[2] != strconv.Itoa(16<<20/512) {
		t.Errorf("container saw %q", out)
	}
	t.Logf("blk at PCI path %s: device_add -> container that read it ended %v (node %s)", path, took.Round(time.Millisecond), lines[0])
}

// testSCSI: a disk hot-added onto the sandbox's virtio-scsi controller,
// passed as a "scsi" device by target:lun.
func testSCSI(ctx context.Context, t *testing.T, d *devGuest) {
	img := diskImage(t, d.dir, "scsi.img", 8<<20, "keel-scsi-disk-marker")
	if _, err := d.p.AddSCSIDisk(ctx, hotplug.Added{ID: "scsi0"}, img, 0, 1); err != nil {
		t.Fatal(err)
	}
	out := d.sh(ctx, t, "stat -c '%F' /dev/xvdd; head -c 21 /dev/xvdd",
		withDevice("/dev/xvdd", "b", 253, 43, &pb.Device{Type: "scsi", Id: "0:1", ContainerPath: "/dev/xvdd"}))
	if out != "block special file\nkeel-scsi-disk-marker" {
		t.Errorf("container saw %q", out)
	}
}

// testSwapPCI: AddSwap by the PCI path of a hot-added, mkswap'd disk.
func testSwapPCI(ctx context.Context, t *testing.T, d *devGuest) {
	img := diskImage(t, d.dir, "swap2.img", 24<<20, "")
	run(t, "mkswap", img)
	added, err := d.p.AddBlock(ctx, img, false)
	if err != nil {
		t.Fatal(err)
	}
	path := added.PCIPath
	slot, err := strconv.ParseUint(strings.Split(path, "/")[0], 16, 8)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.Agent.AddSwap(ctx, &pb.AddSwapRequest{PCIPath: []uint32{uint32(slot), 0}}); err != nil {
		t.Fatal(err)
	}
	out := d.sh(ctx, t, "cat /proc/swaps")
	if !strings.Contains(out, strconv.Itoa(24<<10-4)) { // swap size in KiB minus the header page
		t.Errorf("no 24 MiB swap device in /proc/swaps: %q", out)
	}
	// A PCI path where nothing is plugged: DeadlineExceeded after the
	// hotplug timeout, nothing swapped on.
	_, err = d.c.Agent.AddSwap(ctx, &pb.AddSwapRequest{PCIPath: []uint32{0x1e, 0}})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("AddSwap at an empty slot: %v", err)
	}
}

// testVFIO: a virtio-rng function (driven by virtio-pci) hot-added behind
// the emulated Intel IOMMU is passed as "vfio-pci": the agent rebinds it
// to vfio-pci, and the container gets the guest's /dev/vfio/<group> (the
// spec named the host's group 99), which it can open. A second one passed
// as "vfio-pci-gk" keeps its guest driver; PCIDEVICE_* variables name the
// guest addresses.
func testVFIO(ctx context.Context, t *testing.T, d *devGuest) {
	pciPath := d.hotAdd(ctx, t, "virtio-rng-pci", nil)
	req := withDevice("/dev/vfio/99", "c", 511, 99, &pb.Device{Type: "vfio-pci", Id: "99", ContainerPath: "/dev/vfio/99", Options: []string{"0000:3b:00.0=" + pciPath}})
	env := func(r *pb.CreateContainerRequest) {
		r.OCI.Process.Env = append(r.OCI.Process.Env, "PCIDEVICE_KEEL_COM_RNG=0000:3b:00.0")
	}
	out := d.sh(ctx, t, `echo "env $PCIDEVICE_KEEL_COM_RNG"; for f in /dev/vfio/*; do echo "node $f $(stat -c '%t:%T %F' $f)"; done; `+
		`exec 3<>$(ls /dev/vfio/* | head -1) && echo opened; readlink /sys/bus/pci/devices/$PCIDEVICE_KEEL_COM_RNG/driver; readlink /sys/bus/pci/devices/$PCIDEVICE_KEEL_COM_RNG/iommu_group`, req, env)
	t.Logf("vfio-pci at %s, container saw:\n%s", pciPath, out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 5 || !strings.HasPrefix(lines[0], "env 0000:") || lines[0] == "env 0000:3b:00.0" ||
		!strings.HasPrefix(lines[1], "node /dev/vfio/") || strings.HasPrefix(lines[1], "node /dev/vfio/99 ") || !strings.HasSuffix(lines[1], "character special file") ||
		lines[2] != "opened" || !strings.HasSuffix(lines[3], "/vfio-pci") || path.Base(lines[4]) != strings.Fields(lines[1])[1][len("/dev/vfio/"):] {
		t.Errorf("unexpected container view:\n%s", out)
	}

	path2 := d.hotAdd(ctx, t, "virtio-rng-pci", nil)
	gk := func(r *pb.CreateContainerRequest) {
		r.Devices = append(r.Devices, &pb.Device{Type: "vfio-pci-gk", Id: "98", ContainerPath: "/dev/vfio/98", Options: []string{"0000:3b:00.1=" + path2}})
		r.OCI.Process.Env = append(r.OCI.Process.Env, "PCIDEVICE_KEEL_COM_RNG=0000:3b:00.1")
	}
	out = d.sh(ctx, t, `echo $PCIDEVICE_KEEL_COM_RNG; readlink /sys/bus/pci/devices/$PCIDEVICE_KEEL_COM_RNG/driver`, gk)
	lines = strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || lines[0] == "0000:3b:00.1" || !strings.HasSuffix(lines[1], "/virtio-pci") {
		t.Errorf("vfio-pci-gk: container saw %q, want the guest address and virtio-pci still bound", out)
	}
}

// watch is a container that prints "<processors in /proc/cpuinfo>
// <MemTotal kB>" every 50 ms; the host reads its stdout as it comes, so a
// change is seen within one period of becoming visible to containers.
type watch struct {
	mu      sync.Mutex
	cpus    int
	memKiB  int64
	changed chan struct{} // closed and replaced on every new line
	err     error
}

func startWatch(ctx context.Context, t *testing.T, c *client.Client) *watch {
	t.Helper()
	script := `while :; do echo "$(grep -c ^processor /proc/cpuinfo) $(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)"; sleep 0.05; done`
	if _, err := c.Agent.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "watch", ExecId: "watch", OCI: BusyboxSpec(ContainerRootfs, "/bin/sh", "-c", script)}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Agent.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "watch"}); err != nil {
		t.Fatal(err)
	}
	w := &watch{changed: make(chan struct{})}
	go func() {
		var buf string
		for {
			r, err := c.Agent.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: "watch", ExecId: "watch", Len: 4096})
			if err == nil && len(r.Data) == 0 {
				err = fmt.Errorf("watch container ended")
			}
			if err != nil {
				w.mu.Lock()
				w.err = err
				close(w.changed)
				w.mu.Unlock()
				return
			}
			buf += string(r.Data)
			for {
				line, rest, ok := strings.Cut(buf, "\n")
				if !ok {
					break
				}
				buf = rest
				var cpus int
				var mem int64
				if n, _ := fmt.Sscanf(line, "%d %d", &cpus, &mem); n == 2 {
					w.mu.Lock()
					w.cpus, w.memKiB = cpus, mem
					close(w.changed)
					w.changed = make(chan struct{})
					w.mu.Unlock()
				}
			}
		}
	}()
	t.Cleanup(func() {
		c.Agent.RemoveContainer(context.Background(), &pb.RemoveContainerRequest{ContainerId: "watch"})
	})
	return w
}

// until waits for ok(cpus, memKiB) and returns when it first held.
func (w *watch) until(ctx context.Context, ok func(cpus int, memKiB int64) bool) (int, int64, time.Time, error) {
	for {
		w.mu.Lock()
		cpus, mem, ch, err := w.cpus, w.memKiB, w.changed, w.err
		w.mu.Unlock()
		if err != nil {
			return cpus, mem, time.Time{}, err
		}
		if cpus > 0 && ok(cpus, mem) {
			return cpus, mem, time.Now(), nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return cpus, mem, time.Time{}, ctx.Err()
		}
	}
}

func testHotplugCPU(ctx context.Context, t *testing.T, d *devGuest, w *watch) {
	if _, _, _, err := w.until(ctx, func(int, int64) bool { return true }); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := d.p.AddCPU(ctx); err != nil {
		t.Fatal(err)
	}
	added := time.Since(start)
	// The runtime asks for the new total right after device_add.
	if _, err := d.c.Agent.OnlineCPUMem(ctx, &pb.OnlineCPUMemRequest{NbCpus: 2, CpuOnly: true}); err != nil {
		t.Fatal(err)
	}
	rpc := time.Since(start)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cpus, _, seen, err := w.until(wctx, func(cpus int, _ int64) bool { return cpus == 2 })
	if err != nil {
		t.Fatalf("the container still sees %d CPUs: %v", cpus, err)
	}
	if out := d.sh(ctx, t, "cat /sys/devices/system/cpu/online"); out != "0-1\n" {
		t.Errorf("online CPUs %q, want 0-1", out)
	}
	t.Logf("vCPU: device_add %v; OnlineCPUMem(nb_cpus=2) returned %v after device_add; 2 processors in a container's /proc/cpuinfo %v after device_add",
		added.Round(time.Millisecond), rpc.Round(time.Millisecond), seen.Sub(start).Round(time.Millisecond))
}

func testHotplugMemory(ctx context.Context, t *testing.T, d *devGuest, w *watch) {
	_, before, _, err := w.until(ctx, func(int, int64) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := d.p.AddDIMM(ctx, 256); err != nil {
		t.Fatal(err)
	}
	added := time.Since(start)
	if _, err := d.c.Agent.OnlineCPUMem(ctx, &pb.OnlineCPUMemRequest{}); err != nil {
		t.Fatal(err)
	}
	rpc := time.Since(start)
	// Blocks that appear after OnlineCPUMem returned are onlined by the
	// kernel (auto_online_blocks, set by the agent).
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, after, seen, err := w.until(wctx, func(_ int, mem int64) bool { return mem-before >= 256<<10 })
	if err != nil {
		t.Fatalf("MemTotal %d -> %d kB: %v", before, after, err)
	}
	if after-before != 256<<10 {
		t.Errorf("MemTotal %d -> %d kB, want +262144 kB", before, after)
	}
	if out := d.sh(ctx, t, "cat /sys/devices/system/memory/memory*/state | sort | uniq -c"); strings.Contains(out, "offline") {
		t.Errorf("memory blocks still offline: %q", out)
	}
	t.Logf("DIMM 256 MiB: object-add+device_add %v; OnlineCPUMem returned %v after device_add; MemTotal +%d kB in a container %v after device_add",
		added.Round(time.Millisecond), rpc.Round(time.Millisecond), after-before, seen.Sub(start).Round(time.Millisecond))
}

func testSwapPath(ctx context.Context, t *testing.T, d *devGuest) {
	const dev = "/dev/vda" // the first -drive, the 32 MiB swap disk
	if _, err := d.c.Agent.AddSwapPath(ctx, &pb.AddSwapPathRequest{Path: dev}); err != nil {
		t.Fatal(err)
	}
	out := d.sh(ctx, t, "cat /proc/swaps")
	if f := strings.Fields(out); len(f) < 8 || f[5] != dev || f[7] != strconv.Itoa(32<<10-4) { // KiB, minus the header page
		t.Errorf("%s (32 MiB) not in the container's /proc/swaps: %q", dev, out)
	}
}
