package vmtest

import (
	"context"
	"strings"
	"testing"
	"time"

	pb "github.com/keelvm/keel/protocol/grpc"
)

// TestBootContainerPowerOff is the spine end to end in one boot: the agent
// is PID 1 and answers over AF_VSOCK, reports its boot timeline, runs a
// container whose output and exit status arrive, and DestroySandbox powers
// the guest off (QEMU exits 0 because the guest shut down, not a reset).
func TestBootContainerPowerOff(t *testing.T) {
	if why := Available(); why != "" {
		t.Skip(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	g, err := Boot(ctx, Config{Busybox: true, Log: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	c, err := g.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	d, err := c.Agent.GetGuestDetails(ctx, &pb.GuestDetailsRequest{MemBlockSize: true})
	if err != nil {
		t.Fatal(err)
	}
	if !d.AgentDetails.InitDaemon {
		t.Errorf("agent in the guest is not PID 1: %v", d.AgentDetails)
	}
	feats := strings.Join(d.AgentDetails.ExtraFeatures, " ")
	for _, m := range []string{"init_start", "mounts_done", "modules_loaded", "boot_done", "listener_ready"} {
		if !strings.Contains(feats, "keel.boot."+m+"=") {
			t.Errorf("boot timeline lacks %s: %v", m, d.AgentDetails.ExtraFeatures)
		}
	}
	t.Logf("boot timeline: %v", d.AgentDetails.ExtraFeatures)

	a := c.Agent
	if _, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{Hostname: "vmtest", SandboxId: "s"}); err != nil {
		t.Fatal(err)
	}
	spec := BusyboxSpec(ContainerRootfs, "/bin/sh", "-c", `echo "$(hostname) $$ $(cat /proc/self/oom_score_adj)"; cat /proc/self/cgroup >&2; exit 3`)
	out, errOut, status, err := RunContainer(ctx, a, "c", spec)
	if err != nil {
		t.Fatal(err)
	}
	// oom_score_adj 0: the container must not inherit the agent's -997.
	if out != "vmtest 1 0\n" || status != 3 {
		t.Errorf("container stdout %q status %d, want \"vmtest 1 0\\n\" (the sandbox's hostname over the spec's, as in Kata; pid 1, oom_score_adj 0) and 3", out, status)
	}
	if !strings.Contains(errOut, "0::/") {
		t.Errorf("container cgroup (v2 in the guest) %q", errOut)
	}
	if _, err := a.DestroySandbox(ctx, &pb.DestroySandboxRequest{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.VM.Done():
	case <-time.After(60 * time.Second):
		t.Fatalf("guest did not power off after DestroySandbox; console:\n%s", tail(g.VM.SerialLog(), 30))
	}
	if err := g.VM.Wait(); err != nil {
		t.Errorf("QEMU: %v", err)
	}
	if r := g.VM.ShutdownReason(); r != "guest-shutdown" {
		t.Errorf("shutdown reason %q, want guest-shutdown (a power-off, not a panic/reset)", r)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
