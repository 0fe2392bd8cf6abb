package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/container/containertest"
	"github.com/keelvm/keel/kernel-config/kbuild"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/keelctltest"
	"github.com/keelvm/keel/tests/vmtest"
)

// TestDemoBootsFromDAX boots the guest `make vm-demo` boots (the same
// BootDAX and Collect) and asserts the evidence it prints: the root on
// /dev/pmem0 with dax=always, STATX_ATTR_DAX on the agent's own binary,
// the guest page cache not growing by a quarter of the 16 MiB read from
// the image, a boot timeline; with Keel's kernel when it is cached. On the
// same guest keelctl's run/exec/kill/stats/rm (pipes and a tty) and logs
// are checked over AF_VSOCK, then the guest powers off on DestroySandbox.
func TestDemoBootsFromDAX(t *testing.T) {
	if testing.Short() {
		t.Skip("VM test skipped in -short mode")
	}
	if why := vmtest.Available(); why != "" {
		t.Skip(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	keelctl := keelctltest.Binary(t, t.TempDir())
	_, kerr := kbuild.DefaultBuilt(ctx, "x86_64")
	if kerr != nil && !errors.Is(kerr, kbuild.ErrNotBuilt) {
		t.Fatal(kerr)
	}
	start := time.Now()
	g, err := BootDAX(ctx, t.TempDir(), testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("serial console (tail):\n%s", tailLines(g.VM.SerialLog(), 60))
		}
		g.Close()
	}()
	t.Logf("kernel: %s; agent answered %.1fs after the start", g.KernelDesc, time.Since(start).Seconds())
	if g.OwnKernel != (kerr == nil) {
		t.Errorf("booted own kernel = %v, but the kernel cache says built = %v", g.OwnKernel, kerr == nil)
	}
	c, err := g.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	e, err := Collect(ctx, c, g.AgentAddr(), keelctl)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("evidence:\n%s", e.Report())
	if err := e.Check(); err != nil {
		t.Error(err)
	}
	if g.OwnKernel && len(e.KernelGaps) > 0 {
		t.Errorf("Keel's kernel lacks options the agent needs: %v", e.KernelGaps)
	}

	// keelctl logs --follow streams lines logged after it connected.
	follow := exec.CommandContext(ctx, keelctl, "--addr", g.AgentAddr(), "logs", "--follow", "--port", "1025")
	var followOut containertest.LockedBuffer
	follow.Stdout = &followOut
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	keelctltest.Check(t, keelctl, g.AgentAddr(), ContainerRootfs, KeelctlTimeout)
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(followOut.String(), "ExecProcess") && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	follow.Process.Signal(os.Interrupt)
	if err := follow.Wait(); err != nil {
		t.Errorf("keelctl logs --follow ended with %v on SIGINT", err)
	}
	if !strings.Contains(followOut.String(), "ExecProcess") {
		t.Errorf("keelctl logs --follow did not show the agent logging the exec; got %d bytes: %q", len(followOut.String()), tailLines(followOut.String(), 5))
	}
	r := keelctltest.Run(t, keelctl, g.AgentAddr(), "", time.Minute, "logs")
	if r.Code != 0 || !strings.Contains(r.Stdout, "listening") {
		t.Errorf("keelctl logs: exit %d, %d bytes, no \"listening\" line", r.Code, len(r.Stdout))
	}

	if _, err := c.Agent.DestroySandbox(ctx, &pb.DestroySandboxRequest{}); err != nil {
		t.Fatalf("DestroySandbox: %v", err)
	}
	if err := waitPowerOff(ctx, g); err != nil {
		t.Error(err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
