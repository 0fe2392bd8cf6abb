package guestbench

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/keelvm/keel/agent/container/containertest"
	"github.com/keelvm/keel/agent/ociconv"
	"github.com/keelvm/keel/kernel-config/kbuild"
	"github.com/keelvm/keel/protocol/client"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/rootfs-builder/build"
	"github.com/keelvm/keel/rootfs-builder/image"
	"github.com/keelvm/keel/tests/vmm/qemu"
	"github.com/keelvm/keel/tests/vmtest"
)

// benchScript times runc/crun loops inside the guest (see its header).
//
//go:embed bench.sh
var benchScript []byte

// Inside the guest image.
const (
	// BenchDir holds bench.sh and the bundle templates.
	BenchDir = "/bench"
	// Rootfs is the busybox container rootfs every runtime runs.
	Rootfs = BenchDir + "/rootfs"
	// Packages are bootstrapped into the Debian image beside the agent.
	packages = "runc,crun"
	// debugConsolePort is agent.debug_console's vsock port (Kata's 1026).
	debugConsolePort = 1026
	imageEpoch       = 1700000000
)

// Spec is the Kata-like CreateContainer spec the agent runs, on rootfs; the
// runc and crun bundles are the same spec converted with ociconv.FromPB (as
// containerbench's host tier does), so all three start the same container:
// new pid, network, ipc, uts and mount namespaces, a read-only root, the
// usual /proc /dev /sys mounts, a deny-all device cgroup.
func Spec(rootfs string, args ...string) *pb.Spec {
	caps := []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}
	return &pb.Spec{
		Version:  "1.0.2",
		Hostname: "bench",
		Root:     &pb.Root{Path: rootfs, Readonly: true},
		Process: &pb.Process{
			Args: args, Env: []string{"PATH=/bin"}, Cwd: "/", User: &pb.User{},
			Capabilities:    &pb.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps},
			NoNewPrivileges: true,
		},
		Mounts: []*pb.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "size=1m"}},
		},
		Linux: &pb.Linux{
			Namespaces:    []*pb.LinuxNamespace{{Type: "pid"}, {Type: "network"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"}},
			MaskedPaths:   []string{"/proc/kcore", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/sys", "/proc/sysrq-trigger"},
			Resources:     &pb.LinuxResources{Devices: []*pb.LinuxDeviceCgroup{{Allow: false, Access: "rwm", Major: -1, Minor: -1}}},
		},
	}
}

// WriteBenchDir writes bench.sh and the bundle templates true.json
// (/bin/true) and sleep.json (/bin/sleep 100000) for a rootfs at rootfs
// into dir; bench.sh puts each container's cgroup path in for @CGROUP@.
func WriteBenchDir(dir, rootfs string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, args := range map[string][]string{"true.json": {"/bin/true"}, "sleep.json": {"/bin/sleep", "100000"}} {
		spec, err := ociconv.FromPB(Spec(rootfs, args...))
		if err != nil {
			return fmt.Errorf("unable to convert the bench spec: %w", err)
		}
		spec.Linux.CgroupsPath = "@CGROUP@"
		js, err := json.MarshalIndent(spec, "", "\t")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name), js, 0o644); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, "bench.sh"), benchScript, 0o755)
}

// Result is one "keel-guestbench RUNTIME OP N NS_PER_OP" line of bench.sh.
type Result struct {
	Runtime, Op string
	N           int
	NsPerOp     int64
}

// resultLines returns the lines of out from their "keel-guestbench " on: a
// console transcript has echoed input, prompts and terminal escapes (bash's
// bracketed-paste toggles) around bench.sh's output.
func resultLines(out string) []string {
	var lines []string
	for _, line := range strings.Split(out, "\n") {
		if i := strings.Index(line, "keel-guestbench "); i >= 0 {
			lines = append(lines, line[i:])
		}
	}
	return lines
}

// ParseResults returns bench.sh's result lines in out (a console
// transcript), at least one.
func ParseResults(out string) ([]Result, error) {
	var rs []Result
	for _, line := range resultLines(out) {
		f := strings.Fields(line)
		if len(f) != 5 {
			continue
		}
		n, err1 := strconv.Atoi(f[3])
		ns, err2 := strconv.ParseInt(f[4], 10, 64)
		if err1 != nil || err2 != nil || n <= 0 || ns <= 0 {
			return nil, fmt.Errorf("malformed result line %q", line)
		}
		rs = append(rs, Result{Runtime: f[1], Op: f[2], N: n, NsPerOp: ns})
	}
	if len(rs) == 0 {
		return nil, fmt.Errorf("no result line in:\n%s", out)
	}
	return rs, nil
}

// ParseResult is the first of ParseResults.
func ParseResult(out string) (Result, error) {
	rs, err := ParseResults(out)
	if err != nil {
		return Result{}, err
	}
	return rs[0], nil
}

// Guest is the benchmark guest: Keel's kernel booted from a Debian DAX root
// (runc and crun installed) with keel-agent as PID 1, its debug console on,
// and a sandbox created.
type Guest struct {
	*vmtest.Guest
	Client *client.Client
	// BuildTime and BootTime are what the image build and the boot (QEMU
	// start to the sandbox created) took.
	BuildTime, BootTime time.Duration
}

// ErrNoKernel is returned by Boot when Keel's kernel is not built.
var ErrNoKernel = errors.New("keel's guest kernel is not built (make kernel)")

// BuildImage builds the guest image in dir: the debian recipe (bookworm
// minbase + runc + crun, bootstrapped once into the recipe's cache) with
// the agent as /sbin/init, a busybox container rootfs at Rootfs and the
// bench files in BenchDir, as a DAX-capable ext4 image.
func BuildImage(ctx context.Context, dir, agent string, progress func(string, ...any)) (string, error) {
	tree := filepath.Join(dir, "tree")
	if _, err := build.Run(ctx, build.Config{
		Recipe: "debian", Output: build.OutputDir, Out: tree, Epoch: imageEpoch,
		Options: build.RecipeOptions{Agent: agent, Packages: strings.Split(packages, ","), Progress: progress},
	}); err != nil {
		return "", fmt.Errorf("unable to build the debian recipe: %w", err)
	}
	defer os.RemoveAll(tree)
	if err := containertest.MakeRootfs(filepath.Join(tree, Rootfs)); err != nil {
		return "", err
	}
	if err := WriteBenchDir(filepath.Join(tree, BenchDir), Rootfs); err != nil {
		return "", err
	}
	img := filepath.Join(dir, "debian-bench-dax.ext4")
	if _, err := image.Build(ctx, tree, img, image.Spec{FS: image.Ext4, DAX: true, Epoch: imageEpoch}); err != nil {
		return "", fmt.Errorf("unable to build the DAX image: %w", err)
	}
	return img, nil
}

// Boot builds the image in dir and boots it read-only on an NVDIMM with
// Keel's kernel (no initramfs; the kernel mounts the DAX root), 2 vCPUs,
// the agent logging at warn (debug logging would be timed too) and its
// debug console on. extra is added to the kernel command line.
func Boot(ctx context.Context, dir string, log io.Writer, extra ...string) (*Guest, error) {
	k, err := kbuild.DefaultBuilt(ctx, "x86_64")
	if errors.Is(err, kbuild.ErrNotBuilt) {
		return nil, fmt.Errorf("%w: %v", ErrNoKernel, err)
	}
	if err != nil {
		return nil, err
	}
	kernel := k.BzImage
	if k.Vmlinux != "" {
		kernel = k.Vmlinux
	}
	agent, err := vmtest.AgentBinary(ctx)
	if err != nil {
		return nil, err
	}
	g := &Guest{}
	t0 := time.Now()
	img, err := BuildImage(ctx, dir, agent, func(f string, a ...any) {
		if log != nil {
			fmt.Fprintf(log, f+"\n", a...)
		}
	})
	if err != nil {
		return nil, err
	}
	g.BuildTime = time.Since(t0)
	t0 = time.Now()
	cfg := vmtest.Config{
		Kernel: kernel, NoInitrd: true,
		Append: append([]string{"root=/dev/pmem0", "rootfstype=ext4", "rootflags=dax=always", "ro", "init=/sbin/init",
			"agent.log=warn", "agent.debug_console"}, extra...),
		Pmem:      []qemu.PmemDevice{{Path: img, Kind: qemu.NVDIMM, ReadOnly: true}},
		CPUs:      2,
		MemoryMiB: 1024,
		Log:       log,
	}
	if g.Guest, err = vmtest.Boot(ctx, cfg); err != nil {
		return nil, err
	}
	if g.Client, err = g.Dial(ctx); err != nil {
		g.Guest.Close()
		return nil, err
	}
	if _, err := g.Client.Agent.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: "guestbench", Hostname: "guestbench"}); err != nil {
		g.Close()
		return nil, fmt.Errorf("CreateSandbox: %w", err)
	}
	g.BootTime = time.Since(t0)
	return g, nil
}

// Close disconnects and powers the guest off.
func (g *Guest) Close() error {
	if g.Client != nil {
		g.Client.Close()
	}
	return g.Guest.Close()
}

// Shell runs one command line in a debug-console shell session and returns
// the session's transcript (\r dropped) once the shell exits; cmd should
// end the session itself (exec ... or ...; exit).
func (g *Guest) Shell(ctx context.Context, cmd string) (string, error) {
	conn, err := client.DialConn(ctx, g.PortAddr(debugConsolePort))
	if err != nil {
		return "", fmt.Errorf("unable to reach the debug console: %w", err)
	}
	defer conn.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
	if _, err := io.WriteString(conn, cmd+"\n"); err != nil {
		return "", fmt.Errorf("unable to send to the debug console: %w", err)
	}
	out, err := io.ReadAll(conn)
	s := strings.ReplaceAll(string(out), "\r", "")
	if err != nil {
		return s, fmt.Errorf("reading the debug console: %w", err)
	}
	return s, nil
}

// RunScript runs bench.sh with args in the guest and parses its result.
func (g *Guest) RunScript(ctx context.Context, args ...string) (Result, string, error) {
	out, err := g.Shell(ctx, "exec "+BenchDir+"/bench.sh "+strings.Join(args, " ")+" 2>&1")
	if err != nil {
		return Result{}, out, err
	}
	r, err := ParseResult(out)
	return r, out, err
}

// RemountCgroup2 remounts the guest's /sys/fs/cgroup with opts (replacing
// its options: keep nsdelegate; "" only reads them) and returns the options
// the kernel shows.
func (g *Guest) RemountCgroup2(ctx context.Context, opts string) (string, error) {
	out, err := g.Shell(ctx, "exec "+BenchDir+"/bench.sh cgroup2 "+opts+" 2>&1")
	if err != nil {
		return "", err
	}
	for _, line := range resultLines(out) {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "keel-guestbench" && f[1] == "cgroup2" {
			return f[2], nil
		}
	}
	return "", fmt.Errorf("remount of cgroup2 with %s failed:\n%s", opts, out)
}

// HasOption reports whether the mount options list opts (comma-separated)
// has opt.
func HasOption(opts, opt string) bool {
	for _, o := range strings.Split(opts, ",") {
		if o == opt {
			return true
		}
	}
	return false
}
