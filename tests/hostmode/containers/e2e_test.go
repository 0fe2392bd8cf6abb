// Package containers runs the real keel-agent binary in host mode and
// drives containers through it over ttrpc, the way Kata's shim does: the
// libcontainer init re-exec of the real binary, the reaper in a real PID
// tree, and cleanup when the agent stops.
package containers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/container/containertest"
	pb "github.com/keelvm/keel/protocol/grpc"
)

var agentBin, rootfs string

func TestMain(m *testing.M) {
	os.Exit(containertest.HostModeMain(m, func(e *containertest.HostEnv) error {
		agentBin, rootfs = e.AgentBin, e.Rootfs
		return nil
	}))
}

// pbSpec is a minimal Kata-style spec for the busybox rootfs.
func pbSpec(args ...string) *pb.Spec {
	return &pb.Spec{
		Root:    &pb.Root{Path: rootfs, Readonly: true},
		Process: &pb.Process{Args: args, Env: []string{"PATH=/bin"}, Cwd: "/", User: &pb.User{}},
		Mounts: []*pb.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=755"}},
		},
		Linux: &pb.Linux{Namespaces: []*pb.LinuxNamespace{{Type: "pid"}, {Type: "mount"}, {Type: "uts"}, {Type: "ipc"}, {Type: "network"}}},
	}
}

func TestAgentRunsContainers(t *testing.T) {
	agent := containertest.StartAgent(t, containertest.AgentOptions{Bin: agentBin})
	id := fmt.Sprintf("e2e-%d", os.Getpid())
	defer func() {
		agent.Stop(t)
		// Never leave a container behind, whatever failed.
		for _, cid := range []string{id, id + "-left"} {
			if n := containertest.KillCgroup("keel", cid); n > 0 {
				t.Errorf("killed %d processes of %s left behind", n, cid)
			}
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := agent.Dial(t)
	a := c.Agent
	if _, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: id, OCI: pbSpec("/bin/sleep", "1000")}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	p := &pb.Process{Args: []string{"/bin/sh", "-c", "test -d /proc/1 && echo in-pidns:$(( $$ > 1 )); exit 9"}, Env: []string{"PATH=/bin"}, Cwd: "/", User: &pb.User{}}
	if _, err := a.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: id, ExecId: "x", Process: p}); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	for {
		r, err := a.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: id, ExecId: "x", Len: 4096})
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Data) == 0 {
			break
		}
		out.Write(r.Data)
	}
	w, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: id, ExecId: "x"})
	if err != nil || w.Status != 9 || out.String() != "in-pidns:1\n" {
		t.Fatalf("exec: status %v %v, stdout %q", w, err, out.String())
	}

	// A second container is left running: DestroySandbox removes it.
	id2 := id + "-left"
	if _, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: id2, OCI: pbSpec("/bin/sleep", "1000")}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: id2}); err != nil {
		t.Fatal(err)
	}

	// GetMetrics counts what is really there: two containers, each with
	// its sleep, and the RPCs just made.
	m, err := a.GetMetrics(ctx, &pb.GetMetricsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"\nkeel_containers 2\n",
		"\nkeel_container_processes 2\n",
		`keel_agent_rpc_duration_seconds_count{method="/grpc.AgentService/StartContainer"} 2`,
		`keel_agent_rpc_duration_seconds_count{method="/grpc.AgentService/ExecProcess"} 1`,
	} {
		if !strings.Contains(m.Metrics, want) {
			t.Errorf("GetMetrics lacks %q:\n%s", want, m.Metrics)
		}
	}
	if _, err := a.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: id, Timeout: 10}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.DestroySandbox(ctx, &pb.DestroySandboxRequest{}); err != nil {
		t.Fatal(err)
	}
	for _, cid := range []string{id, id2} {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup/memory/keel", cid)); !os.IsNotExist(err) {
			t.Errorf("cgroup of %s left after DestroySandbox: %v", cid, err)
		}
	}
	agent.Stop(t)
	if ch := containertest.Children(); len(ch) > 0 {
		t.Errorf("processes left: %v", ch)
	}
}

// TestNeedsRoot reports, as a skip with its reason, that this package's
// tests did not run without root (see containertest.RunWithoutRoot).
func TestNeedsRoot(t *testing.T) { containertest.SkipUnlessRoot(t, "container tests") }
