// Package vmtest boots a real Keel guest under QEMU TCG for the VM tests and
// the demo: Debian's kernel (cached by tests/vmm/guestkernel), an initramfs
// holding keel-agent as /init plus the modules it loads, and the userspace
// vhost-user-vsock device (tests/vmm/vsockdev) whose hybrid-vsock Unix
// socket gives the host a real AF_VSOCK path to the agent.
package vmtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keelvm/keel/protocol/client"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/vmm/guestkernel"
	"github.com/keelvm/keel/tests/vmm/qemu"
	"github.com/keelvm/keel/tests/vmm/vsockdev"
)

// GuestCID is the CID the test device gives every guest.
const GuestCID = 3

// AgentPort is the agent's ttrpc vsock port.
const AgentPort = 1024

// DefaultModules are what the agent loads at boot in a test guest: the vsock
// transport (with its dependencies) and the PCI transport of virtio, a module
// in Debian's kernel, are all the agent needs to serve. overlay lets
// libcontainer seal the agent binary for each container init with a private
// read-only overlayfs; without it, it copies the whole binary into a memfd on
// every create and exec (1.1-1.6 s more per CreateContainer under TCG;
// exeSealed checks it). Keel's kernel has it built in.
var DefaultModules = []string{"virtio_pci", "vmw_vsock_virtio_transport", "overlay"}

// Config describes one test guest.
type Config struct {
	// Agent is the static keel-agent binary; default $KEEL_AGENT_BIN, else
	// build/keel-agent under the module root.
	Agent string
	// Modules the guest loads at boot (agent.modules=); default DefaultModules.
	Modules []string
	// ExtraModules are put into the initramfs (and loaded) on top of Modules.
	ExtraModules []string
	// Files are host files copied into the initramfs, by guest path
	// ("sbin/mkfs.ext4"), e.g. a tool the agent runs and its libraries.
	Files map[string]string
	// Append is added to the kernel command line.
	Append []string
	// Busybox adds a busybox container rootfs at ContainerRootfs.
	Busybox bool
	// MemoryMiB and CPUs size the VM (defaults: 512, 1).
	MemoryMiB int
	CPUs      int
	// Pmem devices, e.g. a DAX rootfs image.
	Pmem []qemu.PmemDevice
	// Dir holds every file of the guest; default a new temp dir removed by Close.
	Dir string
	// Log receives progress lines; nil discards them.
	Log io.Writer
	// DeferStart leaves the agent unreached: Boot returns as soon as QEMU
	// runs (for late-listener tests).
	DeferStart bool
	// Kernel boots this kernel image instead of Debian's (e.g. Keel's own
	// from kernel-config, which has every driver built in).
	Kernel string
	// NoInitrd boots without an initramfs: the kernel mounts root= itself
	// (set it in Append) and runs the agent from the root filesystem.
	NoInitrd bool
	// QEMU, if set, adjusts the VM's configuration before launch (drives,
	// root ports for hotplug, -smp maxcpus, a vIOMMU, ...).
	QEMU func(*qemu.Config)
}

// Guest is a running test VM.
type Guest struct {
	VM      *qemu.VM
	Device  *vsockdev.Device
	Kernel  *guestkernel.Kernel
	Dir     string
	UDS     string // hybrid vsock socket
	Booted  time.Time
	ownsDir bool
	devLog  *os.File
	once    sync.Once
}

// AgentAddr is the agent's hybrid-vsock address.

// TCGLaunchTimeout is the agent.launch_process_timeout (seconds) the guests
// of these tests boot with.
const TCGLaunchTimeout = 120

func (g *Guest) AgentAddr() string { return fmt.Sprintf("hvsock://%s:%d", g.UDS, AgentPort) }

// PortAddr is the hybrid-vsock address of any guest port.
func (g *Guest) PortAddr(port uint32) string { return fmt.Sprintf("hvsock://%s:%d", g.UDS, port) }

// Dial connects to the agent, retrying until ctx ends.
func (g *Guest) Dial(ctx context.Context) (*client.Client, error) {
	return client.Dial(ctx, g.AgentAddr())
}

// Available says why VM tests cannot run here, or "" when they can.
func Available() string {
	if !qemu.Available() {
		return "qemu-system-x86_64 is not installed"
	}
	if _, err := os.Stat(BusyboxPath); err != nil {
		return "busybox-static is not installed"
	}
	return ""
}

// AgentBinary finds the static agent: $KEEL_AGENT_BIN, else build/keel-agent
// relative to the module root, else it is built with `make agent`.
func AgentBinary(ctx context.Context) (string, error) {
	if p := os.Getenv("KEEL_AGENT_BIN"); p != "" {
		return p, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	p := filepath.Join(root, "build", "keel-agent")
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	cmd := exec.CommandContext(ctx, "make", "-C", root, "agent")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("unable to build the agent: %v\n%s", err, out)
	}
	return p, nil
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("unable to find the module root (go.mod)")
		}
		dir = parent
	}
}

// Boot builds the initramfs, starts the vsock device and QEMU, and (unless
// DeferStart) waits until the agent answers Health.Check. On error nothing
// is left running.
func Boot(ctx context.Context, cfg Config) (_ *Guest, err error) {
	logf := func(format string, a ...any) {
		if cfg.Log != nil {
			fmt.Fprintf(cfg.Log, format+"\n", a...)
		}
	}
	g := &Guest{Dir: cfg.Dir}
	if g.Dir == "" {
		// The owner pid in the name lets qemu.Launch sweep the dirs of
		// test processes that died.
		if g.Dir, err = os.MkdirTemp("", fmt.Sprintf("keel-vm-%d-", os.Getpid())); err != nil {
			return nil, err
		}
		g.ownsDir = true
	}
	defer func() {
		if err != nil {
			g.Close()
		}
	}()
	if cfg.Agent == "" {
		if cfg.Agent, err = AgentBinary(ctx); err != nil {
			return nil, err
		}
	}
	var mods []string
	initrd := ""
	if cfg.Kernel == "" || !cfg.NoInitrd {
		logf("kernel: fetching/using Debian's kernel from %s", guestkernel.CacheRoot())
		if g.Kernel, err = guestkernel.Ensure(ctx); err != nil {
			return nil, fmt.Errorf("unable to get the guest kernel: %w", err)
		}
	}
	if !cfg.NoInitrd {
		mods = cfg.Modules
		if mods == nil {
			mods = DefaultModules
		}
		mods = append(append([]string{}, mods...), cfg.ExtraModules...)
		initrd = filepath.Join(g.Dir, "initrd.img")
		if err := BuildInitrd(ctx, InitrdSpec{Agent: cfg.Agent, Kernel: g.Kernel, Modules: mods, Busybox: cfg.Busybox, Files: cfg.Files}, initrd); err != nil {
			return nil, err
		}
		if fi, err := os.Stat(initrd); err == nil {
			logf("initrd: %s (%d KiB: keel-agent + %d module(s)%s)", initrd, fi.Size()>>10, len(mods), map[bool]string{true: " + busybox rootfs"}[cfg.Busybox])
		}
	}

	g.UDS = filepath.Join(g.Dir, "vsock.sock")
	vhostSock := filepath.Join(g.Dir, "vhost-user-vsock.sock")
	// The device logs to device.log beside serial.log, for post-mortems.
	devLog, err := os.Create(filepath.Join(g.Dir, "device.log"))
	if err != nil {
		return nil, err
	}
	g.devLog = devLog
	g.Device, err = vsockdev.Start(ctx, vsockdev.Config{
		VhostUserSocket: vhostSock,
		UDSPath:         g.UDS,
		GuestCID:        GuestCID,
		Log:             slog.New(slog.NewTextHandler(devLog, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		return nil, fmt.Errorf("unable to start the vsock device: %w", err)
	}

	// Under TCG on a shared host a container start takes seconds; the 6 s
	// default launch bound (meant for real VMs) would fail healthy starts.
	// cfg.Append comes later, so a test can set its own.
	cmdline := []string{"console=ttyS0", "panic=-1", "quiet", "agent.log=debug", "agent.launch_process_timeout=" + strconv.Itoa(TCGLaunchTimeout)}
	if len(mods) > 0 {
		cmdline = append(cmdline, "agent.modules="+strings.Join(mods, ","))
	}
	cmdline = append(cmdline, cfg.Append...)
	kernel := cfg.Kernel
	if kernel == "" {
		// The uncompressed vmlinux boots through PVH, skipping the bzImage
		// decompressor: 2-2.5x faster to init under TCG.
		if kernel, err = g.Kernel.VmlinuxPath(ctx); err != nil {
			return nil, fmt.Errorf("unable to get an uncompressed guest kernel: %w", err)
		}
	}
	qc := qemu.Config{
		Kernel:               kernel,
		Initrd:               initrd,
		Append:               strings.Join(cmdline, " "),
		MemoryMiB:            cfg.MemoryMiB,
		CPUs:                 cfg.CPUs,
		VhostUserVsockSocket: vhostSock,
		Pmem:                 cfg.Pmem,
		Dir:                  g.Dir,
	}
	if cfg.QEMU != nil {
		cfg.QEMU(&qc)
	}
	g.VM, err = qemu.Launch(ctx, qc)
	if err != nil {
		return nil, fmt.Errorf("unable to launch QEMU: %w", err)
	}
	g.Booted = g.VM.Started()
	logf("qemu: pid %d, kernel %s, cmdline %q", g.VM.Pid(), kernel, strings.Join(cmdline, " "))
	if cfg.DeferStart {
		return g, nil
	}
	c, err := g.WaitAgent(ctx)
	if err != nil {
		return nil, err
	}
	c.Close()
	logf("agent: answered Health.Check over AF_VSOCK %.2fs after QEMU started", time.Since(g.Booted).Seconds())
	return g, nil
}

// WaitAgent dials the agent and waits for Health.Check to answer; if QEMU
// exits first, the error carries the tail of the serial console.
func (g *Guest) WaitAgent(ctx context.Context) (*client.Client, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-g.VM.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	c, err := g.Dial(ctx)
	if err == nil {
		_, err = c.Health.Check(ctx, &pb.CheckRequest{})
		if err != nil {
			c.Close()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("agent did not answer at %s: %w\nserial console (tail):\n%s", g.AgentAddr(), err, tail(g.VM.SerialLog(), 40))
	}
	return c, nil
}

// Close stops QEMU and the device and removes the guest's files (when
// Boot created the directory). It is idempotent.
func (g *Guest) Close() error {
	var err error
	g.once.Do(func() {
		if g.VM != nil {
			err = g.VM.Close()
		}
		if g.Device != nil {
			if e := g.Device.Close(); err == nil {
				err = e
			}
		}
		if g.devLog != nil {
			g.devLog.Close()
		}
		if g.ownsDir && os.Getenv("KEEL_VM_KEEP") == "" {
			os.RemoveAll(g.Dir)
		}
	})
	return err
}

// LogOnFailure logs, when t has failed, the tails of the guest's serial
// console (the agent logs there at debug level) and of the vsock device's
// log, so a failure such as "ttrpc: closed" shows which side ended the
// connection and why. Defer it after `defer g.Close()` (it must run before
// Close removes the device log).
func (g *Guest) LogOnFailure(t testing.TB) {
	if !t.Failed() {
		return
	}
	if g.VM != nil {
		t.Logf("serial console (tail):\n%s", tail(g.VM.SerialLog(), 80))
	}
	if g.devLog != nil {
		if b, err := os.ReadFile(g.devLog.Name()); err == nil {
			t.Logf("vsock device log (tail):\n%s", tail(string(b), 40))
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
