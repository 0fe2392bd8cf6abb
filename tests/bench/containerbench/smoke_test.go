package containerbench

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/containers"
	pb "github.com/keelvm/keel/protocol/grpc"
)

// TestScaleSmall runs the scale benchmark's body with three containers in
// the default test run: they are created and running, and removing them
// leaves nothing behind (scale checks processes, cgroups, mounts, fds and
// state).
func TestScaleSmall(t *testing.T) {
	res := scale(t, 3)
	if len(res.create) != 3 {
		t.Fatalf("%d create latencies for 3 containers", len(res.create))
	}
	for i, d := range res.create {
		if d <= 0 {
			t.Errorf("container %d: latency %v", i, d)
		}
	}
}

// TestExecPath checks what BenchmarkExec times: the exec really runs and
// its status comes back, over the wire too.
func TestExecPath(t *testing.T) {
	r, _ := newRPC(t, containers.Options{ExecIOLinger: time.Nanosecond})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := runContainer(ctx, r, "smoke", "/bin/sleep", "1000"); err != nil {
		t.Fatal(err)
	}
	if err := execTrue(ctx, r, "smoke", "t"); err != nil {
		t.Fatal(err)
	}
	agent := serveTTRPC(t, r).Agent
	if _, err := agent.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: "smoke", ExecId: "dd", Process: pbProcess("/bin/dd", "if=/dev/zero", "bs=4096", "count=300")}); err != nil {
		t.Fatal(err)
	}
	if n, err := drainStdout(ctx, agent, "smoke", "dd", chunk); err != nil || n != 300*4096 {
		t.Fatalf("ReadStdout over ttrpc: %d bytes, %v", n, err)
	}
	if w, err := agent.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: "smoke", ExecId: "dd"}); err != nil || w.Status != 0 {
		t.Fatalf("WaitProcess: %v %v", w, err)
	}
	// A failing exec reports its status: the benchmark's status check is real.
	if _, err := r.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: "smoke", ExecId: "f", Process: pbProcess("/bin/false")}); err != nil {
		t.Fatal(err)
	}
	if w, err := r.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: "smoke", ExecId: "f"}); err != nil || w.Status != 1 {
		t.Fatalf("exec /bin/false: %v %v", w, err)
	}
}

// TestLeftoversSeesALiveContainer: the check scale relies on notices a
// container that was not removed (its process and its cgroup dirs).
func TestLeftoversSeesALiveContainer(t *testing.T) {
	r, root := newRPC(t, containers.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := runContainer(ctx, r, "warm", "/bin/true"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: "warm"}); err != nil {
		t.Fatal(err)
	}
	before := leftovers(root)
	if err := runContainer(ctx, r, "live", "/bin/sleep", "1000"); err != nil {
		t.Fatal(err)
	}
	d := before.Diff(leftovers(root))
	if !strings.Contains(d, "children") || !strings.Contains(d, "cgroups") {
		t.Errorf("a live container shows as %q", d)
	}
}

// TestAgentWirePath checks what the wire-tier benchmarks time, through the
// real keel-agent binary: the lifecycle of /bin/true and an exec succeed,
// a container that exits 1 fails the lifecycle check, and RemoveContainer
// really removed the container.
func TestAgentWirePath(t *testing.T) {
	id := fmt.Sprintf("wire-smoke-%d", os.Getpid())
	ids := []string{id, id + "-true", id + "-false"}
	a := startAgent(t, &ids)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := lifecycleTrue(ctx, a, id+"-true"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: id + "-true"}); err == nil {
		t.Error("StartContainer of a removed container succeeded")
	}
	if _, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: id + "-false", OCI: pbSpec("/bin/false")}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: id + "-false"}); err != nil {
		t.Fatal(err)
	}
	if w, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: id + "-false"}); err != nil || w.Status != 1 {
		t.Errorf("/bin/false: %v %v, want status 1", w, err)
	}
	if err := runContainer(ctx, a, id, "/bin/sleep", "1000"); err != nil {
		t.Fatal(err)
	}
	if err := execTrue(ctx, a, id, "t"); err != nil {
		t.Fatal(err)
	}
}
