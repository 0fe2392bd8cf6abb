// Command demo is `make vm-demo`: it boots a Keel guest under QEMU (TCG)
// from Debian's kernel and an initramfs holding keel-agent as PID 1, reaches
// the agent over AF_VSOCK through the userspace vhost-user-vsock device
// (hybrid vsock), runs a busybox container, prints its output and the boot
// timeline, destroys the sandbox and waits for the VM to power off.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/vmtest"
)

func main() {
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after this long")
	keep := flag.Bool("keep", false, "keep the VM directory (serial log, initrd)")
	flag.Parse()
	if err := run(*timeout, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "vm-demo:", err)
		os.Exit(1)
	}
}

func step(format string, a ...any) { fmt.Printf("==> "+format+"\n", a...) }

func run(timeout time.Duration, keep bool) error {
	if why := vmtest.Available(); why != "" {
		return errors.New(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	cfg := vmtest.Config{Busybox: true, Log: os.Stdout}
	if keep {
		dir, err := os.MkdirTemp("", "keel-vm-demo-")
		if err != nil {
			return err
		}
		cfg.Dir = dir
		step("keeping the VM files in %s", dir)
	}
	step("booting a guest under QEMU TCG (no KVM here: expect several seconds)")
	start := time.Now()
	g, err := vmtest.Boot(ctx, cfg)
	if err != nil {
		return err
	}
	defer g.Close()
	step("agent reachable over AF_VSOCK (%s) %.1fs after QEMU started", g.AgentAddr(), time.Since(start).Seconds())

	c, err := g.Dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	v, err := c.Health.Version(ctx, &pb.CheckRequest{})
	if err != nil {
		return err
	}
	d, err := c.Agent.GetGuestDetails(ctx, &pb.GuestDetailsRequest{MemBlockSize: true, MemHotplugProbe: true})
	if err != nil {
		return err
	}
	step("keel-agent %s (API %s), PID 1: %v, memory block size %d MiB", v.AgentVersion, v.GrpcVersion, d.AgentDetails.InitDaemon, d.MemBlockSizeBytes>>20)
	step("boot timeline (guest uptime, CLOCK_BOOTTIME):")
	for _, f := range d.AgentDetails.ExtraFeatures {
		if name, ok := strings.CutPrefix(f, "keel.boot."); ok {
			fmt.Printf("      %s s\n", strings.Replace(name, "=", " = ", 1))
		}
	}

	if m, err := c.Agent.GetMetrics(ctx, &pb.GetMetricsRequest{}); err == nil {
		step("agent memory in the guest: %s", metricLine(m.Metrics, "keel_agent_resident_memory_bytes", "keel_agent_go_heap_inuse_bytes"))
	}

	step("CreateSandbox hostname=keel-demo")
	if _, err := c.Agent.CreateSandbox(ctx, &pb.CreateSandboxRequest{Hostname: "keel-demo", SandboxId: "demo", Dns: []string{"nameserver 10.0.2.3"}}); err != nil {
		return fmt.Errorf("CreateSandbox: %w", err)
	}
	script := `echo "hello from a Keel container"; echo "hostname: $(hostname)"; echo "pid: $$"; echo "kernel: $(uname -r)"; ps | head -5`
	spec := vmtest.BusyboxSpec(vmtest.ContainerRootfs, "/bin/sh", "-c", script)
	step("CreateContainer demo: /bin/sh -c %q", script)
	t0 := time.Now()
	out, errOut, status, err := vmtest.RunContainer(ctx, c.Agent, "demo", spec)
	if err != nil {
		return err
	}
	step("container output (ReadStdout until EOF):")
	for _, l := range strings.SplitAfter(out+errOut, "\n") {
		if l != "" {
			fmt.Print("    | ", l)
		}
	}
	step("container exited with status %d (create to removal %.0f ms under TCG)", status, time.Since(t0).Seconds()*1000)
	step("DestroySandbox: the agent (PID 1) powers the guest off")
	if _, err := c.Agent.DestroySandbox(ctx, &pb.DestroySandboxRequest{}); err != nil {
		return fmt.Errorf("DestroySandbox: %w", err)
	}
	select {
	case <-g.VM.Done():
	case <-ctx.Done():
		return fmt.Errorf("the VM did not power off: %w", ctx.Err())
	}
	if err := g.VM.Wait(); err != nil {
		return fmt.Errorf("QEMU exited badly after power-off: %w", err)
	}
	step("VM powered off, QEMU exited 0; total %.1fs", time.Since(start).Seconds())
	if status != 0 {
		return fmt.Errorf("container exited with %d", status)
	}
	return nil
}

// metricLine picks gauges out of Prometheus text and renders them in KiB.
func metricLine(text string, names ...string) string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		for _, n := range names {
			if v, ok := strings.CutPrefix(line, n+" "); ok {
				var f float64
				fmt.Sscan(v, &f)
				out = append(out, fmt.Sprintf("%s %.0f KiB", strings.TrimPrefix(n, "keel_agent_"), f/1024))
			}
		}
	}
	return strings.Join(out, ", ")
}
