package vmtest

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "github.com/keelvm/keel/protocol/grpc"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestBootContainerPowerOff is the spine end to end in one boot: the agent
// is PID 1 and answers over AF_VSOCK, reports its boot timeline, runs a
// container whose output and exit status arrive, and DestroySandbox powers
// the guest off (QEMU exits 0 because the guest shut down, not a reset).
func TestBootContainerPowerOff(t *testing.T) {
	if why := Available(); why != "" {
		t.Skip(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	g, err := Boot(ctx, Config{Busybox: true, Log: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	defer g.LogOnFailure(t)
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
	gcPolicyAsPID1(ctx, t, c.Agent)

	a := c.Agent
	if _, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{Hostname: "vmtest", SandboxId: "s"}); err != nil {
		t.Fatal(err)
	}
	spec := BusyboxSpec(ContainerRootfs, "/bin/sh", "-c", `echo "$(hostname) $$ $(cat /proc/self/oom_score_adj) $(cat /sys/kernel/rcu_expedited)"; cat /proc/self/cgroup >&2; exit 3`)
	out, errOut, status, err := RunContainer(ctx, a, "c", spec)
	if err != nil {
		t.Fatal(err)
	}
	// oom_score_adj 0: the container must not inherit the agent's -997.
	// rcu_expedited 1: the agent switched expedited RCU on at boot.
	if out != "vmtest 1 0 1\n" || status != 3 {
		t.Errorf("container stdout %q status %d, want \"vmtest 1 0 1\\n\" (the sandbox's hostname over the spec's, as in Kata; pid 1, oom_score_adj 0, rcu_expedited 1) and 3", out, status)
	}
	if !strings.Contains(errOut, "0::/") {
		t.Errorf("container cgroup (v2 in the guest) %q", errOut)
	}
	pid1Unkillable(ctx, t, a)
	exeSealed(ctx, t, a)
	oomReported(ctx, t, a)
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

// oomReported: an OOM kill in a container's memory cgroup (v2 in the
// guest) reaches GetOOMEvent, after the containers before it were watched
// and unwatched on the agent's one shared inotify instance.
func oomReported(ctx context.Context, t *testing.T, a pb.AgentServiceService) {
	t.Helper()
	// The shell doubles a string until the 16 MiB limit kills it.
	spec := BusyboxSpec(ContainerRootfs, "/bin/sh", "-c", "x=a; while :; do x=$x$x; done")
	spec.Linux.Resources = &pb.LinuxResources{Memory: &pb.LinuxMemory{Limit: 16 << 20, Swap: 16 << 20}}
	_, errOut, status, err := RunContainer(ctx, a, "oom", spec)
	if err != nil || status != 137 {
		t.Fatalf("container over its memory limit: status %d, %v (%s), want 137 (SIGKILL)", status, err, errOut)
	}
	// Queued at the kill: the remove since then does not drop it.
	pctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	ev, err := a.GetOOMEvent(pctx, &pb.GetOOMEventRequest{})
	if err != nil || ev.ContainerId != "oom" {
		t.Fatalf("GetOOMEvent after an OOM kill: %v, %v; want container oom", ev, err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// pid1Unkillable: no path from a workload into the agent's pid namespace
// can stop or kill PID 1. OCI hooks run in the agent's namespaces: one sends
// PID 1 every signal (SIGKILL and SIGSTOP included) except the three that
// power the guest off on purpose (INT, TERM, PWR), and the agent goes on
// answering. A container naming the agent's pid namespace is refused, one
// naming none gets its own, and a container process starts with no signal
// ignored (the agent catches signals with handlers, never SIG_IGN).
func pid1Unkillable(ctx context.Context, t *testing.T, a pb.AgentServiceService) {
	t.Helper()
	var sigs []string
	for s := 1; s <= 64; s++ {
		if s != int(unix.SIGINT) && s != int(unix.SIGTERM) && s != int(unix.SIGPWR) {
			sigs = append(sigs, strconv.Itoa(s))
		}
	}
	// The hook leaves its count where the container can read it back.
	// It also records PID 1's caught signals (SigCgt) as it sees them.
	script := "n=0; for s in " + strings.Join(sigs, " ") + "; do kill -$s 1 || exit 1; n=$((n+1)); done; " +
		"{ echo sent $n; echo agent $(grep SigCgt /proc/1/status); } > " + ContainerRootfs + "/signals-sent"
	spec := BusyboxSpec(ContainerRootfs, "/bin/cat", "/signals-sent", "/proc/self/status")
	spec.Hooks = &pb.Hooks{CreateRuntime: []*pb.Hook{{Path: ContainerRootfs + "/bin/busybox", Args: []string{"busybox", "sh", "-c", script}}}}
	out, errOut, code, err := RunContainer(ctx, a, "signaller", spec)
	if err != nil || code != 0 {
		t.Fatalf("container whose hook signals PID 1: status %d, %v (%s)", code, err, errOut)
	}
	if want := "sent " + strconv.Itoa(len(sigs)) + "\n"; !strings.HasPrefix(out, want) {
		t.Fatalf("the hook did not signal PID 1: container output %q, want it to start with %q", out, want)
	}
	ign, agentCgt := "", ""
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "SigIgn:"); ok {
			ign = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(l, "agent SigCgt:"); ok {
			agentCgt = strings.TrimSpace(v)
		}
	}
	// Signals 32-34 have a handler in PID 1: SIG_DFL would let a signal
	// that arrives while the target thread blocks it (Go blocks all while
	// forking) kill init (init/sigguard catchReserved).
	if cgt, err := strconv.ParseUint(agentCgt, 16, 64); err != nil {
		t.Errorf("PID 1's SigCgt %q from the hook: %v", agentCgt, err)
	} else if want := uint64(7) << 31; cgt&want != want {
		t.Errorf("PID 1's SigCgt %#x lacks signals 32-34 (%#x): they are SIG_DFL", cgt, want)
	}
	if ign != "0000000000000000" {
		t.Errorf("container process starts with ignored signals: SigIgn %q", ign)
	}
	// Signals are handled asynchronously: give the agent time to die if
	// it were going to, then check it answers and still runs containers.
	time.Sleep(2 * time.Second)
	if _, err := a.GetGuestDetails(ctx, &pb.GuestDetailsRequest{}); err != nil {
		t.Fatalf("agent after %d signals to PID 1: %v", len(sigs), err)
	}
	// The agent's pid namespace is refused; no pid namespace means a
	// private one (pid 1 inside), never the agent's. That container also
	// shows the agent still runs containers after the signals.
	agentNS := BusyboxSpec(ContainerRootfs, "/bin/true")
	agentNS.Linux.Namespaces[0] = &pb.LinuxNamespace{Type: "pid", Path: "/proc/1/ns/pid"}
	if _, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "agent-pidns", OCI: agentNS}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("container in the agent's pid namespace: %v, want InvalidArgument", err)
	}
	noNS := BusyboxSpec(ContainerRootfs, "/bin/sh", "-c", "echo $$")
	noNS.Linux.Namespaces = noNS.Linux.Namespaces[1:]
	out, _, st, err := RunContainer(ctx, a, "no-pidns", noNS)
	if err != nil || st != 0 || out != "1\n" {
		t.Errorf("container with no pid namespace: %q status %d %v (want its own namespace, pid 1)", out, st, err)
	}
}
