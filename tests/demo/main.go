// Command demo is `make vm-demo` and `make vm-shell`. It builds a DAX root
// image (the minimal recipe: keel-agent as /sbin/init, busybox, a busybox
// container rootfs), boots it read-only under QEMU (TCG) with Keel's own
// kernel on virtio-pmem when `make kernel` cached it (no initramfs), else
// with Debian's kernel on an NVDIMM and a small initramfs that loads the
// pmem modules and switches root, and reaches the agent over AF_VSOCK through the userspace
// vhost-user-vsock device (hybrid vsock).
//
// vm-demo runs a container with keelctl and prints the evidence that the
// guest runs from the DAX image: the root mount with dax=always,
// STATX_ATTR_DAX on the agent's own binary, the guest page cache before
// and after the container read 16 MiB from the image, and the boot
// timeline; then it powers the guest off. demo_test.go asserts the same
// evidence.
//
// vm-shell (-shell) drops you into a shell in a container over AF_VSOCK
// with `keelctl run --tty`; ^D ends it and powers the guest off.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/promtext"
	"github.com/keelvm/keel/tests/vmtest"
)

func main() {
	timeout := flag.Duration("timeout", 5*time.Minute, "give up booting (and, without -shell, the whole demo) after this long")
	keep := flag.Bool("keep", false, "keep the VM directory (serial log, image)")
	shell := flag.Bool("shell", false, "open an interactive shell in a container instead of the scripted demo")
	flag.Parse()
	var err error
	if *shell {
		err = runShell(*timeout, *keep)
	} else {
		err = runDemo(*timeout, *keep)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "vm-demo:", err)
		os.Exit(1)
	}
}

func step(format string, a ...any) { fmt.Printf("==> "+format+"\n", a...) }

// boot is the common start of both modes.
func boot(ctx context.Context, keep bool) (*DAXGuest, string, func(), error) {
	if why := vmtest.Available(); why != "" {
		return nil, "", nil, errors.New(why)
	}
	keelctl, err := keelctlBinary()
	if err != nil {
		return nil, "", nil, err
	}
	dir, err := os.MkdirTemp("", "keel-vm-demo-")
	if err != nil {
		return nil, "", nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	if keep {
		cleanup = func() {}
		step("keeping the VM files in %s", dir)
	}
	step("building the DAX root image (minimal recipe + busybox container, ext4, --dax) and booting it under QEMU TCG (no KVM: expect several seconds)")
	start := time.Now()
	g, err := BootDAX(ctx, dir, prefixWriter{"    "})
	if err != nil {
		cleanup()
		return nil, "", nil, err
	}
	step("kernel: %s", g.KernelDesc)
	step("agent reachable over AF_VSOCK (%s) %.1fs after the start", g.AgentAddr(), time.Since(start).Seconds())
	return g, keelctl, func() { g.Close(); cleanup() }, nil
}

func runDemo(timeout time.Duration, keep bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	g, keelctl, done, err := boot(ctx, keep)
	if err != nil {
		return err
	}
	defer done()
	c, err := g.Dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()

	step("$ keelctl --addr %s run --rm --rootfs %s -- /bin/sh -c '<read %d MiB from the image, print meminfo and mounts>'", g.AgentAddr(), ContainerRootfs, BigFileSize>>20)
	t0 := time.Now()
	e, err := Collect(ctx, c, g.AgentAddr(), keelctl)
	if err != nil {
		return err
	}
	step("container ran in %.1fs (create to removal, TCG) and said: %s", time.Since(t0).Seconds(), e.Hello)
	fmt.Print(e.Report())
	if m, err := c.Agent.GetMetrics(ctx, &pb.GetMetricsRequest{}); err == nil {
		step("agent memory in the guest: %s", metricLine(m.Metrics, "keel_agent_resident_memory_bytes", "keel_agent_go_heap_inuse_bytes"))
	}
	checkErr := e.Check()
	if checkErr != nil {
		step("EVIDENCE CHECK FAILED: %v", checkErr)
	} else {
		step("evidence checked: root on DAX, agent binary DAX-mapped, page cache untouched by image reads")
	}
	if !g.OwnKernel {
		step("this ran on Debian's kernel; `make kernel` once (6-10 min, cached) and vm-demo boots Keel's kernel straight from the DAX image")
	}
	step("$ keelctl --addr %s call DestroySandbox   # the agent (PID 1) powers the guest off", g.AgentAddr())
	if _, err := c.Agent.DestroySandbox(ctx, &pb.DestroySandboxRequest{}); err != nil {
		return fmt.Errorf("DestroySandbox: %w", err)
	}
	if err := waitPowerOff(ctx, g); err != nil {
		return err
	}
	step("VM powered off, QEMU exited 0; total %.1fs", time.Since(start).Seconds())
	return checkErr
}

// Report renders the evidence for a person.
func (e *Evidence) Report() string {
	var b strings.Builder
	fmt.Fprintf(&b, "==> keel-agent %s, PID 1: %v\n", e.AgentVersion, e.PID1)
	fmt.Fprintf(&b, "==> root mount seen by the container (/proc/self/mountinfo; /dev/pmem0 is %s):\n      %s\n", e.PmemDev, e.RootMount)
	fmt.Fprintf(&b, "==> STATX_ATTR_DAX on the agent's own binary (/proc/self/exe): %s\n", e.AgentBinaryDAX)
	fmt.Fprintf(&b, "==> guest page cache around reading %d MiB from the image: Cached %d -> %d KiB (%+d KiB), file LRU %d -> %d KiB (%+d KiB)\n",
		e.BytesRead>>20, e.CachedBefore, e.CachedAfter, e.CachedGrowth(), e.FileLRUBefore, e.FileLRUAfter, e.FileLRUAfter-e.FileLRUBefore)
	fmt.Fprintf(&b, "==> boot timeline (guest uptime, CLOCK_BOOTTIME):\n")
	for _, m := range e.Timeline {
		fmt.Fprintf(&b, "      %-16s %7.3f s\n", m.Name, m.Seconds)
	}
	if len(e.KernelGaps) > 0 {
		fmt.Fprintf(&b, "==> kernel options the agent misses: %s\n", strings.Join(e.KernelGaps, " "))
	}
	return b.String()
}

func waitPowerOff(ctx context.Context, g *DAXGuest) error {
	select {
	case <-g.VM.Done():
	case <-ctx.Done():
		return fmt.Errorf("the VM did not power off: %w", ctx.Err())
	}
	if err := g.VM.Wait(); err != nil {
		return fmt.Errorf("QEMU exited badly after power-off: %w", err)
	}
	return nil
}

// runShell boots the same guest and hands the terminal to `keelctl run
// --tty` with a shell; when the shell ends (^D), the guest powers off.
func runShell(timeout time.Duration, keep bool) error {
	bootCtx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	g, keelctl, done, err := boot(bootCtx, keep)
	if err != nil {
		return err
	}
	defer done()
	args := []string{"--addr", g.AgentAddr(), "--timeout", KeelctlTimeout.String(), "run", "--tty", "--rm", "--rootfs", ContainerRootfs, "--env", "PS1=\\h:\\w# ", "--", "/bin/sh"}
	step("$ keelctl %s", strings.Join(args, " "))
	step("a shell in a container in the guest, over AF_VSOCK; ^D (or exit) ends it and powers the guest off")
	step("from another terminal: keelctl --addr %s logs --follow   (the agent's log)", g.AgentAddr())
	cmd := exec.Command(keelctl, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	runErr := cmd.Run()
	var ee *exec.ExitError
	if errors.As(runErr, &ee) {
		step("the shell exited with status %d", ee.ExitCode())
		runErr = nil
	}
	ctx, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	c, err := g.Dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	step("DestroySandbox: the agent (PID 1) powers the guest off")
	if _, err := c.Agent.DestroySandbox(ctx, &pb.DestroySandboxRequest{}); err != nil {
		return fmt.Errorf("DestroySandbox: %w", err)
	}
	if err := waitPowerOff(ctx, g); err != nil {
		return err
	}
	step("guest powered off")
	return runErr
}

// metricLine picks gauges out of Prometheus text and renders them in KiB.
func metricLine(text string, names ...string) string {
	var out []string
	for _, n := range names {
		if f, ok := promtext.Value(text, n); ok {
			out = append(out, fmt.Sprintf("%s %.0f KiB", strings.TrimPrefix(n, "keel_agent_"), f/1024))
		}
	}
	return strings.Join(out, ", ")
}

// prefixWriter indents the harness's progress lines.
type prefixWriter struct{ prefix string }

func (p prefixWriter) Write(b []byte) (int, error) {
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if l != "" {
			fmt.Print(p.prefix, l)
		}
	}
	return len(b), nil
}
