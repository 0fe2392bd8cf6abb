package vmtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keelvm/keel/protocol/client"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/vmm/qemu"
)

// devGuest is the one guest the device and hotplug subtests share.
type devGuest struct {
	g   *Guest
	c   *client.Client
	n   atomic.Int32
	dir string
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
	out, errOut, code, err := runContainerReq(ctx, d.c.Agent, req)
	if err != nil {
		t.Fatalf("container %q: %v", script, err)
	}
	if code != 0 {
		t.Fatalf("container %q: exit %d, stderr %q, stdout %q", script, code, errOut, out)
	}
	return out
}

// runContainerReq is RunContainer for a prepared request (devices,
// storages).
func runContainerReq(ctx context.Context, a pb.AgentServiceService, req *pb.CreateContainerRequest) (stdout, stderr string, status int32, err error) {
	id := req.ContainerId
	if _, err := a.CreateContainer(ctx, req); err != nil {
		return "", "", 0, fmt.Errorf("CreateContainer %s: %w", id, err)
	}
	defer func() {
		if _, e := a.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: id}); e != nil && err == nil {
			err = fmt.Errorf("RemoveContainer %s: %w", id, e)
		}
	}()
	if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: id}); err != nil {
		return "", "", 0, fmt.Errorf("StartContainer %s: %w", id, err)
	}
	if stdout, err = readStream(ctx, a.ReadStdout, id); err != nil {
		return stdout, "", 0, fmt.Errorf("ReadStdout %s: %w", id, err)
	}
	if stderr, err = readStream(ctx, a.ReadStderr, id); err != nil {
		return stdout, stderr, 0, fmt.Errorf("ReadStderr %s: %w", id, err)
	}
	w, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: id, ExecId: id})
	if err != nil {
		return stdout, stderr, 0, fmt.Errorf("WaitProcess %s: %w", id, err)
	}
	return stdout, stderr, w.Status, nil
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

// TestDevicesAndHotplug boots one guest (Debian's kernel, q35 with an
// emulated Intel IOMMU, room for one more vCPU and for DIMMs, PCIe root
// ports) and checks, from inside containers, what the device and hotplug
// RPCs promise. It logs device_add -> usable latencies under TCG.
func TestDevicesAndHotplug(t *testing.T) {
	if why := Available(); why != "" {
		t.Skip(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dir := t.TempDir()
	swapDisk := diskImage(t, dir, "swap.img", 32<<20, "")
	run(t, "mkswap", swapDisk)
	markDisk := diskImage(t, dir, "mark.img", 8<<20, "keel-cold-disk-marker")

	g, err := Boot(ctx, Config{
		Busybox:      true,
		Log:          testWriter{t},
		ExtraModules: []string{"virtio_blk", "virtio_scsi", "sd_mod", "vfio_pci", "ext4"},
		Append:       []string{"intel_iommu=on"},
		QEMU: func(c *qemu.Config) {
			c.Drives = []qemu.Drive{{Path: swapDisk}, {Path: markDisk, ReadOnly: true}}
			c.PCIeRootPorts = 6
			c.HotplugSlots = 4
			c.MaxMemMiB = 2048
			c.ExtraArgs = append(c.ExtraArgs, "-smp", "1,maxcpus=2", "-device", "intel-iommu,intremap=off")
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
	d := &devGuest{g: g, c: c, dir: dir}
	w := startWatch(ctx, t, c)
	t.Logf("guest:\n%s", d.sh(ctx, t, "cat /proc/cmdline; for b in /sys/block/*; do echo $b $(cat $b/size) $(cat $b/dev); done; ls -l /sys/bus/pci/devices/; ls /sys/kernel/iommu_groups/ | wc -l"))

	t.Run("cpu", func(t *testing.T) { testHotplugCPU(ctx, t, d, w) })
	t.Run("memory", func(t *testing.T) { testHotplugMemory(ctx, t, d, w) })
	t.Run("swap_path", func(t *testing.T) { testSwapPath(ctx, t, d) })
}

// guestBlock finds the guest's /dev name of the virtio disk of size bytes.
func (d *devGuest) guestBlock(ctx context.Context, t *testing.T, size int64) string {
	t.Helper()
	out := d.sh(ctx, t, "for b in /sys/block/vd*; do echo ${b##*/} $(cat $b/size); done")
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[1] == strconv.FormatInt(size/512, 10) {
			return "/dev/" + f[0]
		}
	}
	t.Fatalf("no virtio disk of %d bytes in the guest: %q", size, out)
	return ""
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
	qmpc := d.g.VM.QMP()
	start := time.Now()
	if err := qmpc.DeviceAdd(ctx, "max-x86_64-cpu", "cpu1", map[string]any{"socket-id": 0, "core-id": 1, "thread-id": 0}); err != nil {
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
	qmpc := d.g.VM.QMP()
	start := time.Now()
	if err := qmpc.Execute(ctx, "object-add", map[string]any{"qom-type": "memory-backend-memfd", "id": "dimm1mem", "size": 256 << 20, "share": true}, nil); err != nil {
		t.Fatal(err)
	}
	if err := qmpc.DeviceAdd(ctx, "pc-dimm", "dimm1", map[string]any{"memdev": "dimm1mem"}); err != nil {
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
	dev := d.guestBlock(ctx, t, 32<<20)
	if _, err := d.c.Agent.AddSwapPath(ctx, &pb.AddSwapPathRequest{Path: dev}); err != nil {
		t.Fatal(err)
	}
	out := d.sh(ctx, t, "cat /proc/swaps")
	if !strings.Contains(out, dev+" ") {
		t.Errorf("%s not in the container's /proc/swaps: %q", dev, out)
	}
}
