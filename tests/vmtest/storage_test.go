package vmtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/container/containertest"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/rootfs-builder/pfn"
	"github.com/keelvm/keel/tests/loopdev"
	"github.com/keelvm/keel/tests/vmm/hotplug"
	"github.com/keelvm/keel/tests/vmm/qemu"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Kata's guest paths, as the runtime sends them.
const (
	kataShared     = "/run/kata-containers/shared/containers"
	kataShm        = "/run/kata-containers/sandbox/shm"
	kataStorageDir = "/run/kata-containers/sandbox/storage"
)

// TestStorages boots one guest with Kata's sandbox share (virtiofsd), a
// 9p share and a cold-plugged NVDIMM, then runs the storage shapes Kata's
// runtime sends, hot-adding disks through QMP into PCIe root ports.
func TestStorages(t *testing.T) {
	if why := Available(); why != "" {
		t.Skip(why)
	}
	const virtiofsd = "/usr/lib/qemu/virtiofsd"
	if _, err := os.Stat(virtiofsd); err != nil {
		t.Skipf("virtiofsd is not installed (qemu-system-common): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	tmp := t.TempDir()

	// Host side: the sandbox share with two container rootfs and a volume
	// dir, a 9p dir, disk images.
	share := filepath.Join(tmp, "share")
	statx := filepath.Join(tmp, "statxdax")
	build := exec.Command("go", "build", "-o", statx, "./testdata/statxdax")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building statxdax: %v: %s", err, out)
	}
	for _, id := range []string{"pause", "app", "reader"} {
		rootfs := filepath.Join(share, id, "rootfs")
		must(t, containertest.MakeRootfs(rootfs))
		copyFileT(t, statx, filepath.Join(rootfs, "bin/statxdax"))
	}
	must(t, os.MkdirAll(filepath.Join(share, "vol"), 0o777))
	must(t, os.WriteFile(filepath.Join(share, "vol/from-host"), []byte("written on the host\n"), 0o644))
	ninep := filepath.Join(tmp, "9p")
	must(t, os.MkdirAll(ninep, 0o755))
	must(t, os.WriteFile(filepath.Join(ninep, "hello"), []byte("over 9p\n"), 0o644))

	volImg := ext4Image(t, tmp, "vol", 64<<20, map[string]string{"hello": "on a hot-plugged disk\n"})
	rootDir := filepath.Join(tmp, "blkroot")
	must(t, containertest.MakeRootfs(rootDir))
	must(t, os.WriteFile(filepath.Join(rootDir, "which"), []byte("rootfs on virtio-blk\n"), 0o644))
	rootImg := filepath.Join(tmp, "root.img")
	mkfsDir(t, rootImg, rootDir, 64<<20)
	loadImg := ext4Image(t, tmp, "load", 32<<20, map[string]string{"hello": "found while the CPUs were busy\n"})
	// An nvdimm is DAX-capable only with an fsdax PFN info block in front
	// of the filesystem (Kata's nsdax layout); the guest then sees only
	// the filesystem as /dev/pmem0.
	nvBare := ext4Image(t, tmp, "nv", 64<<20, map[string]string{"hello": "on an nvdimm\n"})
	nvImg := filepath.Join(tmp, "nv-fsdax.img")
	if _, err := pfn.Wrap(nvBare, nvImg, pfn.Options{Mode: pfn.ModeRAM}); err != nil {
		t.Fatal(err)
	}
	vpImg := ext4Image(t, tmp, "vp", 64<<20, map[string]string{"hello": "on a virtio-pmem\n"})
	scsiImg := ext4Image(t, tmp, "scsi", 32<<20, map[string]string{"hello": "on virtio-scsi\n"})

	sock := filepath.Join(tmp, "vfs.sock")
	vfs := exec.Command(virtiofsd, "--socket-path="+sock, "-o", "source="+share, "-o", "cache=auto", "-o", "sandbox=namespace")
	vfsLog, _ := os.Create(filepath.Join(tmp, "virtiofsd.log"))
	vfs.Stdout, vfs.Stderr = vfsLog, vfsLog
	must(t, vfs.Start())
	defer func() { vfs.Process.Kill(); vfs.Wait() }()
	waitFile(t, sock)

	const rootPorts = 13
	g, err := Boot(ctx, Config{
		Busybox: true, Log: testWriter{t},
		ExtraModules: []string{"virtio_blk", "virtiofs", "9p", "9pnet_virtio", "virtio_scsi", "sd_mod",
			"nfit", "nd_pmem", "virtio_pmem", "ext4", "crc32c_generic", "erofs", "overlay",
			"dm_mod", "dm_crypt", "xts", "ecb", "dm_verity"}, // no modprobe in the guest: xts(aes) needs ecb loaded
		// create_filesystem runs the guest image's mkfs.ext4.
		Files: hostTool(t, "mkfs.ext4", "usr/sbin/mkfs.ext4"),
		Pmem:  []qemu.PmemDevice{{Path: nvImg, Kind: qemu.NVDIMM}},
		QEMU: func(c *qemu.Config) {
			c.PCIeRootPorts = rootPorts
			c.ExtraArgs = append(c.ExtraArgs,
				"-chardev", "socket,id=vfs0,path="+sock, "-device", "vhost-user-fs-pci,chardev=vfs0,tag=kataShared",
				"-fsdev", "local,id=fs9p,path="+ninep+",security_model=passthrough", "-device", "virtio-9p-pci,fsdev=fs9p,mount_tag=share9p")
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
	a := c.Agent
	plug := hotplug.New(g.VM.QMP(), rootPorts)
	// The latencies below run a container after the device_add; this is
	// what running one costs without any storage, for comparison.
	var baseline time.Duration
	measureBaseline := func(t *testing.T) {
		start := time.Now()
		if _, _, code, err := runWithStorages(ctx, a, "baseline", BusyboxSpec(ContainerRootfs, "/bin/true"), nil); err != nil || code != 0 {
			t.Fatalf("baseline container: exit %d %v", code, err)
		}
		baseline = time.Since(start)
		t.Logf("a container without storages, created, run and removed: %s", baseline.Round(time.Millisecond))
	}

	// The Kata sandbox: the virtio-fs share and the shm, then a pause
	// container and an app container whose rootfs are in the share and
	// whose /dev/shm is the sandbox's.
	t.Run("KataSandboxShape", func(t *testing.T) {
		start := time.Now()
		if _, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{Hostname: "kata", SandboxId: "sb", Storages: []*pb.Storage{
			{Driver: "virtio-fs", Source: "kataShared", Fstype: "virtiofs", MountPoint: kataShared},
			{Driver: "ephemeral", Source: "shm", Fstype: "tmpfs", MountPoint: kataShm, Options: []string{"noexec", "nosuid", "nodev", "mode=1777", "size=67108864"}},
		}}); err != nil {
			t.Fatal(err)
		}
		t.Logf("CreateSandbox with the virtio-fs share and the shm: %s", time.Since(start).Round(time.Millisecond))
		kataSpec := func(id string, args ...string) *pb.Spec {
			s := BusyboxSpec(kataShared+"/"+id+"/rootfs", args...)
			for _, m := range s.Mounts {
				if m.Destination == "/dev/shm" {
					m.Type, m.Source, m.Options = "bind", kataShm, []string{"rbind"}
				}
			}
			s.Mounts = append(s.Mounts, &pb.Mount{Destination: "/vol", Type: "bind", Source: kataShared + "/vol", Options: []string{"rbind"}})
			return s
		}
		if _, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "pause", ExecId: "pause", OCI: kataSpec("pause", "/bin/sleep", "1000")}); err != nil {
			t.Fatal(err)
		}
		if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "pause"}); err != nil {
			t.Fatal(err)
		}
		out, errOut, code, err := RunContainer(ctx, a, "app", kataSpec("app", "/bin/sh", "-c",
			"cat /vol/from-host; echo written in the container > /vol/from-guest; echo via shm > /dev/shm/note; cat /which 2>/dev/null; df -t tmpfs /dev/shm | tail -1"))
		if err != nil || code != 0 {
			t.Fatalf("app: %v (exit %d): %s %s", err, code, out, errOut)
		}
		if !strings.Contains(out, "written on the host") {
			t.Errorf("the host's file did not reach the container: %q", out)
		}
		if !strings.Contains(out, "65536") {
			t.Errorf("/dev/shm is not the 64 MiB sandbox shm: %q", out)
		}
		if b, err := os.ReadFile(filepath.Join(share, "vol/from-guest")); err != nil || string(b) != "written in the container\n" {
			t.Errorf("the container's file on the host: %q %v", b, err)
		}
		out, _, code, err = RunContainer(ctx, a, "reader", kataSpec("reader", "/bin/cat", "/dev/shm/note"))
		if err != nil || code != 0 || out != "via shm\n" {
			t.Errorf("another container reading the sandbox shm: %q exit %d %v", out, code, err)
		}
	})

	// A virtio-blk disk hot-added by PCI path as a volume, then another as
	// a container's rootfs.
	t.Run("BlkVolumeAndRootfs", func(t *testing.T) {
		measureBaseline(t)
		start := time.Now()
		d, err := plug.AddBlock(ctx, volImg, false)
		if err != nil {
			t.Fatal(err)
		}
		mp := kataStorageDir + "/blkvol"
		spec := BusyboxSpec(ContainerRootfs, "/bin/cat", "/data/hello")
		spec.Mounts = append(spec.Mounts, &pb.Mount{Destination: "/data", Type: "bind", Source: mp, Options: []string{"rbind"}})
		if _, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "blkvol", ExecId: "blkvol", OCI: spec,
			Storages: []*pb.Storage{{Driver: "blk", Source: d.PCIPath, Fstype: "ext4", MountPoint: mp}}}); err != nil {
			t.Fatalf("CreateContainer with blk %s: %v", d.PCIPath, err)
		}
		t.Logf("virtio-blk: device_add -> mounted by CreateContainer (PCI path %s): %s", d.PCIPath, time.Since(start).Round(time.Millisecond))
		out := startAndRead(ctx, t, a, "blkvol")
		if out != "on a hot-plugged disk\n" {
			t.Errorf("volume: %q", out)
		}
		if _, err := a.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: "blkvol"}); err != nil {
			t.Fatal(err)
		}
		// The last user left: unmounted (a container listing mounts sees none).
		if m := guestMounts(ctx, t, a, "mounts-after"); strings.Contains(m, mp) {
			t.Errorf("%s still mounted after its container was removed", mp)
		}

		start = time.Now()
		r, err := plug.AddBlock(ctx, rootImg, false)
		if err != nil {
			t.Fatal(err)
		}
		rootMP := "/run/kata-containers/blkroot/rootfs"
		out, errOut, code, err := runWithStorages(ctx, a, "blkroot", BusyboxSpec(rootMP, "/bin/cat", "/which"),
			[]*pb.Storage{{Driver: "blk", Source: r.PCIPath, Fstype: "ext4", MountPoint: rootMP}})
		if err != nil || code != 0 || out != "rootfs on virtio-blk\n" {
			t.Fatalf("rootfs on a disk: %q %q exit %d %v", out, errOut, code, err)
		}
		t.Logf("virtio-blk rootfs: device_add -> container ran: %s", time.Since(start).Round(time.Millisecond))
	})

	// The same while the guest's CPUs are saturated: the disk is still
	// found within the default agent.hotplug_timeout.
	t.Run("BlkUnderCPULoad", func(t *testing.T) {
		busy := BusyboxSpec(ContainerRootfs, "/bin/sh", "-c", "(while :; do :; done) & (while :; do :; done) & while :; do :; done")
		if _, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "busy", ExecId: "busy", OCI: busy}); err != nil {
			t.Fatal(err)
		}
		if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "busy"}); err != nil {
			t.Fatal(err)
		}
		defer a.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: "busy", Timeout: 5})
		defer a.SignalProcess(ctx, &pb.SignalProcessRequest{ContainerId: "busy", Signal: 9})
		time.Sleep(time.Second)
		start := time.Now()
		d, err := plug.AddBlock(ctx, loadImg, false)
		if err != nil {
			t.Fatal(err)
		}
		mp := kataStorageDir + "/loadvol"
		spec := BusyboxSpec(ContainerRootfs, "/bin/cat", "/data/hello")
		spec.Mounts = append(spec.Mounts, &pb.Mount{Destination: "/data", Type: "bind", Source: mp, Options: []string{"rbind"}})
		out, errOut, code, err := runWithStorages(ctx, a, "loadvol", spec, []*pb.Storage{{Driver: "blk", Source: d.PCIPath, Fstype: "ext4", MountPoint: mp}})
		if err != nil || code != 0 || out != "found while the CPUs were busy\n" {
			t.Fatalf("under load: %q %q exit %d %v", out, errOut, code, err)
		}
		t.Logf("virtio-blk with the guest CPU saturated: device_add -> container read the volume: %s", time.Since(start).Round(time.Millisecond))
	})

	// Persistent memory, mounted with DAX: the cold-plugged NVDIMM
	// (/dev/pmem0) and a hot-added virtio-pmem.
	t.Run("PmemDAX", func(t *testing.T) {
		measureBaseline(t)
		for _, c := range []struct {
			name, dev string
			add       func() error
		}{
			{"nvdimm", "/dev/pmem0", func() error { return nil }},
			{"virtio-pmem", "/dev/pmem1", func() error { _, err := plug.AddPmem(ctx, vpImg, 64<<20); return err }},
		} {
			start := time.Now()
			if err := c.add(); err != nil {
				t.Fatal(err)
			}
			mp := kataStorageDir + "/" + c.name
			spec := BusyboxSpec(kataShared+"/app/rootfs", "/bin/sh", "-c", "cat /data/hello; statxdax /data/hello")
			spec.Mounts = append(spec.Mounts, &pb.Mount{Destination: "/data", Type: "bind", Source: mp, Options: []string{"rbind"}})
			out, errOut, code, err := runWithStorages(ctx, a, c.name, spec, []*pb.Storage{{Driver: "nvdimm", Source: c.dev, Fstype: "ext4", MountPoint: mp}})
			if err != nil || code != 0 {
				t.Fatalf("%s: %q %q exit %d %v", c.name, out, errOut, code, err)
			}
			if !strings.Contains(out, "/data/hello dax") {
				dbg, _, _, _ := RunContainer(ctx, a, c.name+"-dbg", BusyboxSpec(ContainerRootfs, "/bin/sh", "-c", "grep . /sys/block/pmem*/queue/dax; grep pmem /proc/self/mountinfo; ls -l /sys/block/"))
				t.Errorf("%s: no STATX_ATTR_DAX inside the container: %q (guest: %s)", c.name, out, dbg)
			}
			t.Logf("%s: (device_add ->) mounted with dax and read in a container: %s", c.name, time.Since(start).Round(time.Millisecond))
		}
	})

	t.Run("NineP", func(t *testing.T) {
		mp := "/run/kata-containers/shared/9p"
		spec := BusyboxSpec(ContainerRootfs, "/bin/sh", "-c", "cat /data/hello; echo back > /data/from-guest")
		spec.Mounts = append(spec.Mounts, &pb.Mount{Destination: "/data", Type: "bind", Source: mp, Options: []string{"rbind"}})
		start := time.Now()
		out, errOut, code, err := runWithStorages(ctx, a, "ninep", spec, []*pb.Storage{{Driver: "9p", Source: "share9p", Fstype: "9p", MountPoint: mp,
			Options: []string{"trans=virtio", "version=9p2000.L", "msize=262144"}}})
		if err != nil || code != 0 || out != "over 9p\n" {
			t.Fatalf("9p: %q %q exit %d %v", out, errOut, code, err)
		}
		t.Logf("9p: mounted and read in a container: %s", time.Since(start).Round(time.Millisecond))
		if b, err := os.ReadFile(filepath.Join(ninep, "from-guest")); err != nil || string(b) != "back\n" {
			t.Errorf("9p write seen on the host: %q %v", b, err)
		}
	})

	// A virtio-fs device hot-added through QMP (Kata cold-plugs its share;
	// this is the path for a share added to a running sandbox): a second
	// virtiofsd, chardev-add + device_add vhost-user-fs-pci into a free
	// root port, then a container storage with its tag. The agent retries
	// the mount until the tag is known, so the RPC may follow the
	// device_add at once.
	t.Run("VirtioFSHotAdd", func(t *testing.T) {
		dir := filepath.Join(tmp, "hotfs")
		must(t, os.MkdirAll(dir, 0o777))
		must(t, os.WriteFile(filepath.Join(dir, "from-host"), []byte("through a hot-added virtio-fs\n"), 0o644))
		sock2 := filepath.Join(tmp, "vfs2.sock")
		vfs2 := exec.Command(virtiofsd, "--socket-path="+sock2, "-o", "source="+dir, "-o", "cache=auto", "-o", "sandbox=namespace")
		vfs2Log, _ := os.Create(filepath.Join(tmp, "virtiofsd2.log"))
		vfs2.Stdout, vfs2.Stderr = vfs2Log, vfs2Log
		must(t, vfs2.Start())
		defer func() { vfs2.Process.Kill(); vfs2.Wait() }()
		waitFile(t, sock2)

		mp := "/run/kata-containers/shared/hotfs"
		spec := BusyboxSpec(ContainerRootfs, "/bin/sh", "-c", "cat /data/from-host; echo from the container > /data/from-guest")
		spec.Mounts = append(spec.Mounts, &pb.Mount{Destination: "/data", Type: "bind", Source: mp, Options: []string{"rbind"}})
		start := time.Now()
		d, err := plug.AddVirtioFS(ctx, sock2, "hotfs")
		if err != nil {
			t.Fatal(err)
		}
		added := time.Since(start)
		if _, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "hotfs", ExecId: "hotfs", OCI: spec,
			Storages: []*pb.Storage{{Driver: "virtio-fs", Source: "hotfs", Fstype: "virtiofs", MountPoint: mp}}}); err != nil {
			t.Fatalf("CreateContainer with the hot-added virtio-fs (PCI path %s): %v", d.PCIPath, err)
		}
		mounted := time.Since(start)
		defer a.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: "hotfs"})
		out := startAndRead(ctx, t, a, "hotfs")
		used := time.Since(start)
		if out != "through a hot-added virtio-fs\n" {
			t.Errorf("the host's file in the container: %q", out)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "from-guest")); err != nil || string(b) != "from the container\n" {
			t.Errorf("the container's file on the host: %q %v", b, err)
		}
		t.Logf("virtio-fs hot-add (PCI path %s): device_add returned %s; mounted by CreateContainer %s; container read and wrote through it %s (after device_add)",
			d.PCIPath, added.Round(time.Millisecond), mounted.Round(time.Millisecond), used.Round(time.Millisecond))
		// Split CreateContainer with the agent's log (guest clock): from
		// the RPC's arrival to the mount, then the container's creation.
		var mountedAt, rpcStart, rpcEnd time.Time
		for _, r := range parseLogLines(g.VM.SerialLog()) {
			if r.Msg == "virtio-fs mounted" && strings.Contains(r.raw, `"tag":"hotfs"`) {
				mountedAt = r.Time
			}
			if !mountedAt.IsZero() && r.Msg == "rpc" && strings.HasSuffix(r.Method, "CreateContainer") {
				var d struct {
					Duration time.Duration `json:"duration"`
				}
				if json.Unmarshal([]byte(r.raw), &d) == nil {
					rpcStart, rpcEnd = r.Time.Add(-d.Duration), r.Time
				}
				break
			}
		}
		if mountedAt.IsZero() || rpcStart.IsZero() {
			t.Errorf("no \"virtio-fs mounted\" / CreateContainer rpc record for hotfs in the agent's log")
		} else {
			t.Logf("virtio-fs hot-add: device_add -> mounted = %s (device_add %s on the host + %s in the agent from the RPC's arrival to the mount, vsock transit not counted); the container's creation took %s more",
				(added + mountedAt.Sub(rpcStart)).Round(time.Millisecond), added.Round(time.Millisecond), mountedAt.Sub(rpcStart).Round(time.Millisecond), rpcEnd.Sub(mountedAt).Round(time.Millisecond))
		}
		for _, l := range grepLog(g, "virtio-fs") {
			t.Logf("agent: %s", l)
		}
	})

	t.Run("VirtioFSTagNeverAppears", func(t *testing.T) {
		start := time.Now()
		_, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "notag", ExecId: "notag", OCI: BusyboxSpec(ContainerRootfs, "/bin/true"),
			Storages: []*pb.Storage{{Driver: "virtio-fs", Source: "nosuchtag", Fstype: "virtiofs", MountPoint: "/run/kata-containers/shared/notag"}}})
		if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(status.Convert(err).Message(), "nosuchtag") {
			t.Fatalf("err = %v, want DeadlineExceeded naming the tag", err)
		}
		if d := time.Since(start); d < 3*time.Second {
			t.Errorf("gave up after %s, before agent.hotplug_timeout (3s)", d)
		}
	})

	// Kata's multi-layer EROFS rootfs (runtime-rs's GPT mode): one
	// hot-added read-only disk with a partition per EROFS layer (the
	// bottom one holds busybox; the top one is checked with dm-verity, its
	// hash tree after the image as veritysetup writes it), one hot-added
	// ext4 disk as the writable upper; the container runs on the overlay
	// the agent builds. Then the same disk with one byte of the top layer
	// changed: the read fails.
	t.Run("MultiLayerErofs", func(t *testing.T) {
		for _, tool := range []string{"mkfs.erofs", "veritysetup"} {
			if _, err := exec.LookPath(tool); err != nil {
				t.Fatalf("%s (erofs-utils, cryptsetup-bin: scripts/apt-packages.txt): %v", tool, err)
			}
		}
		erofs := func(name string, fill func(dir string)) string {
			src := filepath.Join(tmp, name+"-src")
			fill(src)
			img := filepath.Join(tmp, name+".erofs")
			if out, err := exec.Command("mkfs.erofs", "--quiet", img, src).CombinedOutput(); err != nil {
				t.Fatalf("mkfs.erofs %s: %v: %s", name, err, out)
			}
			return img
		}
		big := make([]byte, 64<<10)
		for i := range big {
			big[i] = byte(i*7 + i/251)
		}
		top := erofs("layer-top", func(d string) {
			must(t, os.MkdirAll(filepath.Join(d, "etc"), 0o755))
			must(t, os.WriteFile(filepath.Join(d, "etc/layer"), []byte("top\n"), 0o644))
			must(t, os.WriteFile(filepath.Join(d, "big"), big, 0o644))
		})
		fi, err := os.Stat(top)
		must(t, err)
		hashOffset := fi.Size()
		vout, err := exec.Command("veritysetup", "format", top, top, fmt.Sprintf("--hash-offset=%d", hashOffset)).CombinedOutput()
		if err != nil {
			t.Fatalf("veritysetup format: %v: %s", err, vout)
		}
		var rootHash, salt string
		for _, line := range strings.Split(string(vout), "\n") {
			if v, ok := strings.CutPrefix(line, "Root hash:"); ok {
				rootHash = strings.TrimSpace(v)
			}
			if v, ok := strings.CutPrefix(line, "Salt:"); ok {
				salt = strings.TrimSpace(v)
			}
		}
		if rootHash == "" || salt == "" {
			t.Fatalf("veritysetup printed no root hash or salt: %s", vout)
		}
		bottom := erofs("layer-bottom", func(d string) {
			must(t, containertest.MakeRootfs(d))
			must(t, os.WriteFile(filepath.Join(d, "etc/layer"), []byte("bottom\n"), 0o644))
			must(t, os.WriteFile(filepath.Join(d, "etc/base"), []byte("only in the bottom layer\n"), 0o644))
		})
		layers := loopdev.GPTImage(t, top, bottom)
		upperImg := ext4Image(t, tmp, "mlupper", 32<<20, nil)
		// The same layers with one byte of big changed in the top one.
		topBytes, err := os.ReadFile(top)
		must(t, err)
		at := bytes.Index(topBytes, big[:4096])
		if at < 0 {
			t.Fatal("big's data is not stored plainly in the EROFS image")
		}
		topBytes[at+100] ^= 0xff
		tampered := filepath.Join(tmp, "layer-top-tampered.erofs")
		must(t, os.WriteFile(tampered, topBytes, 0o644))
		tamperedLayers := loopdev.GPTImage(t, tampered, bottom)

		mp := "/run/kata-containers/shared/containers/mlayer/rootfs"
		storages := func(layersPath, upperPath string) []*pb.Storage {
			lower := func(n string, extra ...string) *pb.Storage {
				return &pb.Storage{Driver: "blk", Source: layersPath, Fstype: "erofs", MountPoint: mp,
					Options: append([]string{"ro", "X-kata.overlay-lower", "X-kata.multi-layer=true", "X-kata.gpt-partitioned=true", "X-kata.partition-number=" + n}, extra...)}
			}
			ss := []*pb.Storage{
				lower("1", "X-kata.mkdir.path={{ mount 0 }}/upper/made:0755", "X-kata.dmverity-enabled=true",
					"X-kata.dmverity.roothash="+rootHash, "X-kata.dmverity.salt="+salt, fmt.Sprintf("X-kata.dmverity.hashoffset=%d", hashOffset)),
				lower("2"),
			}
			if upperPath != "" {
				ss = append([]*pb.Storage{{Driver: "blk", Source: upperPath, Fstype: "ext4", MountPoint: mp, Options: []string{"X-kata.overlay-upper", "X-kata.multi-layer=true"}}}, ss...)
			}
			return ss
		}

		start := time.Now()
		ld, err := plug.AddBlock(ctx, layers, true)
		if err != nil {
			t.Fatal(err)
		}
		ud, err := plug.AddBlock(ctx, upperImg, false)
		if err != nil {
			t.Fatal(err)
		}
		out, errOut, code, err := runWithStorages(ctx, a, "mlayer", BusyboxSpec(mp, "/bin/sh", "-c",
			"cat /etc/layer /etc/base; test -d /made && echo made; wc -c < /big; echo from the container > /written; grep ' / ' /proc/mounts"), storages(ld.PCIPath, ud.PCIPath))
		if err != nil || code != 0 {
			t.Fatalf("multi-layer rootfs: %q %q exit %d %v", out, errOut, code, err)
		}
		t.Logf("multi-layer EROFS (2 partitions, one under dm-verity, + ext4 upper): device_add -> container ran: %s", time.Since(start).Round(time.Millisecond))
		if want := "top\nonly in the bottom layer\nmade\n65536\n"; !strings.HasPrefix(out, want) || !strings.Contains(out, "overlay") {
			t.Errorf("container saw %q, want %q then the overlay root (partition 1 over partition 2, mkdir made)", out, want)
		}
		if m := guestMounts(ctx, t, a, "mlayer-after"); strings.Contains(m, "multi-layer") || strings.Contains(m, mp) {
			t.Errorf("layers still mounted after the container was removed:\n%s", m)
		}
		blocks, _, _, err := RunContainer(ctx, a, "mlayer-blocks", BusyboxSpec(ContainerRootfs, "/bin/ls", "/sys/block"))
		if err != nil || strings.Contains(blocks, "dm-") {
			t.Errorf("the dm-verity device outlived the rootfs: %q %v", blocks, err)
		}
		// The write went to the upper disk: read it on the host.
		got, err := exec.Command("debugfs", "-R", "cat /upper/written", upperImg).Output()
		if err != nil || string(got) != "from the container\n" {
			t.Errorf("the container's write on the upper disk: %q %v", got, err)
		}

		// Tampered: the layer still mounts (its metadata is intact) but
		// reading the changed block fails.
		td, err := plug.AddBlock(ctx, tamperedLayers, true)
		if err != nil {
			t.Fatal(err)
		}
		out, errOut, code, err = runWithStorages(ctx, a, "mlayer-tampered", BusyboxSpec(mp, "/bin/sh", "-c", "cat /etc/layer; cat /big > /dev/null"), storages(td.PCIPath, ""))
		if err != nil {
			t.Fatalf("tampered layers: %v", err)
		}
		if out != "top\n" || code == 0 || !strings.Contains(errOut, "Input/output error") {
			t.Errorf("a changed block of a dm-verity layer: exit %d, %q %q; want the layer mounted and big unreadable (EIO)", code, out, errOut)
		}
	})

	// Kata's block emptyDir with encryption_key=ephemeral: the agent puts
	// dm-crypt with a key made in the guest over the hot-added disk, makes
	// an ext4 on it (create_filesystem, the guest image's mkfs.ext4) and
	// mounts it; the host's image holds only ciphertext, and the device is
	// gone with the container.
	t.Run("EphemeralEncryptedDisk", func(t *testing.T) {
		img := filepath.Join(tmp, "ephemeral.img")
		f, err := os.Create(img)
		must(t, err)
		must(t, f.Truncate(32<<20))
		f.Close()
		start := time.Now()
		d, err := plug.AddBlock(ctx, img, false)
		if err != nil {
			t.Fatal(err)
		}
		mp := kataStorageDir + "/ephemeral"
		const marker = "KEEL-PLAINTEXT-MARKER-0123456789"
		spec := BusyboxSpec(ContainerRootfs, "/bin/sh", "-c",
			"i=0; while [ $i -lt 256 ]; do echo "+marker+"; i=$((i+1)); done > /data/secret && sync && cat /data/secret | wc -l && grep ' /data ' /proc/mounts")
		spec.Mounts = append(spec.Mounts, &pb.Mount{Destination: "/data", Type: "bind", Source: mp, Options: []string{"rbind"}})
		out, errOut, code, err := runWithStorages(ctx, a, "ephemeral", spec, []*pb.Storage{{Driver: "blk", Source: d.PCIPath, Fstype: "ext4", MountPoint: mp,
			DriverOptions: []string{"create_filesystem", "encryption_key=ephemeral"}}})
		if err != nil || code != 0 {
			t.Fatalf("encrypted emptyDir: %q %q exit %d %v", out, errOut, code, err)
		}
		t.Logf("ephemeral encrypted disk: device_add -> dm-crypt + mkfs.ext4 + mount + container ran: %s", time.Since(start).Round(time.Millisecond))
		if !strings.HasPrefix(out, "256\n") || !strings.Contains(out, "/dev/dm-") || !strings.Contains(out, " ext4 ") {
			t.Errorf("the container's /data is not an ext4 on a dm device: %q", out)
		}
		if m := guestMounts(ctx, t, a, "ephemeral-after"); strings.Contains(m, mp) {
			t.Errorf("%s still mounted after its container", mp)
		}
		blocks, _, _, err := RunContainer(ctx, a, "ephemeral-blocks", BusyboxSpec(ContainerRootfs, "/bin/ls", "/sys/block"))
		if err != nil || strings.Contains(blocks, "dm-") {
			t.Errorf("the dm-crypt device outlived its storage: %q %v", blocks, err)
		}
		raw, err := os.ReadFile(img)
		must(t, err)
		if bytes.Contains(raw, []byte(marker)) {
			t.Error("the container's plaintext reached the host's disk image")
		}
		if len(bytes.Trim(raw, "\x00")) == 0 {
			t.Error("nothing was written to the disk")
		}
		if raw[1024+56] == 0x53 && raw[1024+57] == 0xEF {
			t.Error("an ext4 superblock in clear on the disk: mkfs did not go through dm-crypt")
		}
	})

	t.Run("SCSI", func(t *testing.T) {
		start := time.Now()
		ctl, err := plug.AddSCSIController(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := plug.AddSCSIDisk(ctx, ctl, scsiImg, 1, 2); err != nil {
			t.Fatal(err)
		}
		mp := kataStorageDir + "/scsivol"
		spec := BusyboxSpec(ContainerRootfs, "/bin/cat", "/data/hello")
		spec.Mounts = append(spec.Mounts, &pb.Mount{Destination: "/data", Type: "bind", Source: mp, Options: []string{"rbind"}})
		out, errOut, code, err := runWithStorages(ctx, a, "scsi", spec, []*pb.Storage{{Driver: "scsi", Source: "1:2", Fstype: "ext4", MountPoint: mp}})
		if err != nil || code != 0 || out != "on virtio-scsi\n" {
			t.Fatalf("scsi: %q %q exit %d %v", out, errOut, code, err)
		}
		t.Logf("virtio-scsi: controller + disk device_add -> container read the volume: %s", time.Since(start).Round(time.Millisecond))
	})

	t.Run("PCIPathNeverAppears", func(t *testing.T) {
		start := time.Now()
		_, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "ghost", ExecId: "ghost", OCI: BusyboxSpec(ContainerRootfs, "/bin/true"),
			Storages: []*pb.Storage{{Driver: "blk", Source: "1e/00", Fstype: "ext4", MountPoint: kataStorageDir + "/ghost"}}})
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("err = %v, want DeadlineExceeded", err)
		}
		if d := time.Since(start); d < 3*time.Second {
			t.Errorf("gave up after %s, before agent.hotplug_timeout (3s)", d)
		}
	})

	// How long the agent waited for each disk after the RPC asked for it
	// (the device_add came just before the RPC).
	for _, l := range grepLog(g, "disk found") {
		t.Logf("agent: %s", l)
	}
	if _, err := a.RemoveStaleVirtiofsShareMounts(ctx, &pb.RemoveStaleVirtiofsShareMountsRequest{}); err != nil {
		t.Errorf("RemoveStaleVirtiofsShareMounts: %v", err)
	}
}

// runWithStorages is RunContainer with container storages.
func runWithStorages(ctx context.Context, a pb.AgentServiceService, id string, spec *pb.Spec, ss []*pb.Storage) (string, string, int32, error) {
	if _, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: id, ExecId: id, OCI: spec, Storages: ss}); err != nil {
		return "", "", 0, fmt.Errorf("CreateContainer %s: %w", id, err)
	}
	defer a.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: id})
	if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: id}); err != nil {
		return "", "", 0, err
	}
	out, err := readStream(ctx, a.ReadStdout, id, id)
	if err != nil {
		return out, "", 0, err
	}
	errOut, _ := readStream(ctx, a.ReadStderr, id, id)
	w, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: id, ExecId: id})
	if err != nil {
		return out, errOut, 0, err
	}
	return out, errOut, w.Status, nil
}

func startAndRead(ctx context.Context, t *testing.T, a pb.AgentServiceService, id string) string {
	t.Helper()
	if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	out, err := readStream(ctx, a.ReadStdout, id, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: id, ExecId: id}); err != nil {
		t.Fatal(err)
	}
	return out
}

// guestMounts lists the agent's mounts as a new container sees them: its
// mount namespace starts as a copy of the agent's.
func guestMounts(ctx context.Context, t *testing.T, a pb.AgentServiceService, id string) string {
	t.Helper()
	out, _, _, err := RunContainer(ctx, a, id, BusyboxSpec(ContainerRootfs, "/bin/cat", "/proc/self/mountinfo"))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func copyFileT(t *testing.T, from, to string) {
	b, err := os.ReadFile(from)
	must(t, err)
	must(t, os.WriteFile(to, b, 0o755))
}

// ext4Image makes an ext4 image (4 KiB blocks, so DAX can map it) holding files.
func ext4Image(t *testing.T, dir, name string, size int64, files map[string]string) string {
	src := filepath.Join(dir, name+"-src")
	must(t, os.MkdirAll(src, 0o755))
	for f, c := range files {
		must(t, os.WriteFile(filepath.Join(src, f), []byte(c), 0o644))
	}
	img := filepath.Join(dir, name+".img")
	mkfsDir(t, img, src, size)
	return img
}

func mkfsDir(t *testing.T, img, src string, size int64) {
	f, err := os.Create(img)
	must(t, err)
	must(t, f.Truncate(size))
	f.Close()
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", src, img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 %s: %v: %s", img, err, out)
	}
}

func waitFile(t *testing.T, p string) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(p); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear", p)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// hostTool returns the initramfs files that make the host's tool name
// run in the guest at guestPath: the binary and the shared libraries ldd
// lists (with their paths, the loader included).
func hostTool(t *testing.T, name, guestPath string) map[string]string {
	bin, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s (e2fsprogs) is not installed: %v", name, err)
	}
	files := map[string]string{guestPath: bin}
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", bin, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				files[strings.TrimPrefix(f, "/")] = f
			}
		}
	}
	return files
}
