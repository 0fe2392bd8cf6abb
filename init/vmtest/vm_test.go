package vmtest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/rootfs-builder/cpio"
	"github.com/keelvm/keel/tests/vmm/guestkernel"
	"github.com/keelvm/keel/tests/vmm/qemu"
)

const baseCmdline = "console=ttyS0 panic=-1 quiet agent.log=debug agent.hostname=keelvm keeltest.poweroff"

func setup(t *testing.T) (*guestkernel.Kernel, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a VM")
	}
	if !qemu.Available() {
		t.Skip("qemu not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	k, err := guestkernel.Ensure(ctx)
	if err != nil {
		t.Skipf("no guest kernel: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "init")
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	cmd := exec.Command(gobin, "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./testdata/guest")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build guest init: %v\n%s", err, out)
	}
	t.Logf("guest init built in %.1fs", time.Since(start).Seconds())
	return k, bin
}

// initramfs packs /init, /dev/console and the modules for names.
func initramfs(t *testing.T, k *guestkernel.Kernel, bin string, names ...string) string {
	t.Helper()
	stage := t.TempDir()
	mods, err := k.ModulesFor(names...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.InstallModules(context.Background(), stage, mods); err != nil {
		t.Fatal(err)
	}
	entries, err := cpio.TreeEntries(stage)
	if err != nil {
		t.Fatal(err)
	}
	entries = append(entries,
		cpio.File("init", bin, 0o755),
		cpio.Dir("dev", 0o755),
		cpio.CharDev("dev/console", 0o600, 5, 1),
	)
	p := filepath.Join(t.TempDir(), "initrd.cpio")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := cpio.WriteEntries(f, entries, cpio.Options{}); err != nil {
		t.Fatal(err)
	}
	return p
}

// boot runs the VM to power-off and returns its console.
func boot(t *testing.T, cfg qemu.Config) (string, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vm, err := qemu.Launch(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if err := vm.WaitSerial(ctx, "KEEL READY"); err != nil {
		t.Fatal(err)
	}
	ready := time.Since(vm.Started())
	select {
	case <-vm.Done():
	case <-ctx.Done():
		t.Fatalf("guest did not power off:\n%s", vm.SerialLog())
	}
	t.Logf("QEMU exited %.2fs after start", time.Since(vm.Started()).Seconds())
	if os.Getenv("KEEL_VMTEST_CONSOLE") != "" {
		t.Logf("console:\n%s", vm.SerialLog())
	}
	return vm.SerialLog(), ready
}

var readyRE = regexp.MustCompile(`KEEL READY initramfs=(\w+) (.*)`)

// span returns the seconds between two timeline entries of a READY line.
func span(t *testing.T, line, from, to string) float64 {
	t.Helper()
	get := func(name string) float64 {
		m := regexp.MustCompile(`\b` + name + `=([0-9.]+)s`).FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("%s missing in %q", name, line)
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	return get(to) - get(from)
}

func TestBootFromInitramfs(t *testing.T) {
	k, bin := setup(t)
	log, ready := boot(t, qemu.Config{
		Kernel: k.VmlinuzPath,
		Initrd: initramfs(t, k, bin, "virtio_pci", "vmw_vsock_virtio_transport"),
		// cgroup v1 here; the switch-root test covers the v2 default.
		Append: baseCmdline + " agent.modules=virtio_pci,vmw_vsock_virtio_transport systemd.unified_cgroup_hierarchy=0",
	})
	m := readyRE.FindStringSubmatch(log)
	if m == nil || m[1] != "true" {
		t.Fatalf("no READY line with initramfs=true:\n%s", log)
	}
	if !strings.Contains(log, "KEEL ROOT") || !strings.Contains(log, " - rootfs ") {
		t.Errorf("root is not the initramfs:\n%s", log)
	}
	for _, want := range []string{`"msg":"mount -t proc`, `"msg":"modules loaded"`, `"msg":"ip link set lo up"`, `"msg":"hostname keelvm"`,
		`"msg":"mount -t tmpfs -o nosuid,nodev,noexec,mode=0755 cgroup_root /sys/fs/cgroup"`,
		`"msg":"mount -t cgroup -o nosuid,nodev,noexec,cpu,cpuacct cgroup /sys/fs/cgroup/cpu,cpuacct"`,
		`"msg":"mount -t cgroup -o nosuid,nodev,noexec,memory cgroup /sys/fs/cgroup/memory"`,
		`"msg":"echo \"-997\" > /proc/self/oom_score_adj"`} {
		if !strings.Contains(log, want) {
			t.Errorf("console lacks %s", want)
		}
	}
	t.Logf("kernel %s: READY %.2fs after QEMU start; init_start at %s guest uptime; init_start->listener_ready %.3fs (modules %.3fs)",
		k.Version, ready.Seconds(), strings.Fields(m[2])[0], span(t, m[2], "init_start", "listener_ready"), span(t, m[2], "mounts_done", "modules_loaded"))
}

func TestSwitchRootToPmemDAX(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fstype  string
		cmdline string // rootfstype= or nothing (probe ext4, then erofs)
	}{
		{"ext4", "ext4", " rootfstype=ext4"},
		{"erofs-probed", "erofs", ""},
	} {
		t.Run(tc.name, func(t *testing.T) { switchRootCase(t, tc.fstype, tc.cmdline) })
	}
}

// rootImage builds a root filesystem image holding bin as /sbin/init, its
// size rounded up to 2 MiB for pmem.
func rootImage(t *testing.T, fstype, bin string) string {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "root")
	for _, d := range []string{"sbin", "dev", "proc", "sys", "run", "tmp"} {
		os.MkdirAll(filepath.Join(img, d), 0o755)
	}
	b, _ := os.ReadFile(bin)
	os.WriteFile(filepath.Join(img, "sbin/init"), b, 0o755)
	file := filepath.Join(dir, "root.img")
	var cmd *exec.Cmd
	switch fstype {
	case "ext4":
		cmd = exec.Command("mkfs.ext4", "-q", "-b", "4096", "-d", img, file, "64M")
	case "erofs":
		// DAX needs uncompressed, non-inline files.
		cmd = exec.Command("mkfs.erofs", "-Enoinline_data", file, img)
	}
	if _, err := exec.LookPath(cmd.Args[0]); err != nil {
		t.Skip(err)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cmd.Args[0], err, out)
	}
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	const align = 2 << 20
	if err := os.Truncate(file, (fi.Size()+align-1)/align*align); err != nil {
		t.Fatal(err)
	}
	return file
}

func switchRootCase(t *testing.T, fstype, extra string) {
	k, bin := setup(t)
	file := rootImage(t, fstype, bin)
	mods := []string{"virtio_pci", "virtio_pmem", "nd_pmem", "ext4", "crc32c_generic", "erofs"}
	log, ready := boot(t, qemu.Config{
		Kernel: k.VmlinuzPath,
		Initrd: initramfs(t, k, bin, mods...),
		Append: baseCmdline + " agent.modules=" + strings.Join(mods, ",") + " agent.rootfs=/dev/pmem0" + extra,
		Pmem:   []qemu.PmemDevice{{Path: file, Kind: qemu.VirtioPmem, ReadOnly: true}},
	})
	m := readyRE.FindStringSubmatch(log)
	if m == nil || m[1] != "false" {
		t.Fatalf("no READY line with initramfs=false:\n%s", log)
	}
	root := regexp.MustCompile(`KEEL ROOT \S+ \S+ \S+ \S+ / (\S+)[^-]* - (\S+) (\S+) (\S+)`).FindAllStringSubmatch(log, -1)
	if len(root) == 0 {
		t.Fatalf("no root line:\n%s", log)
	}
	last := root[len(root)-1]
	if last[2] != fstype || last[3] != "/dev/pmem0" || !strings.HasPrefix(last[1], "ro") || !strings.Contains(last[4], "dax=always") {
		t.Errorf("root mount %q, want %s /dev/pmem0 ro with dax=always", last[0], fstype)
	}
	if !strings.Contains(log, `"stage":"after switch_root"`) {
		t.Errorf("stage 2 not logged:\n%s", log)
	}
	for _, want := range []string{`"msg":"mount -t cgroup2 -o nosuid,nodev,noexec,nsdelegate cgroup2 /sys/fs/cgroup"`,
		`"msg":"echo \"0\" > /sys/fs/cgroup/keel-agent/cgroup.procs"`, `"msg":"echo \"33554432\" > /sys/fs/cgroup/keel-agent/memory.min"`} {
		if !strings.Contains(log, want) {
			t.Errorf("console lacks %s", want)
		}
	}
	if strings.Contains(log, `"level":"WARN","msg":"echo`) {
		t.Errorf("a protection step failed in the guest:\n%s", log)
	}
	t.Logf("READY %.2fs after QEMU start; init_start->listener_ready %.3fs (modules %.3fs, switch_root+re-exec %.3fs): %s",
		ready.Seconds(), span(t, m[2], "init_start", "listener_ready"), span(t, m[2], "mounts_done", "modules_loaded"),
		span(t, m[2], "modules_loaded", "root_switched"), m[2])
}
