package containers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/container/containertest"
	"github.com/keelvm/keel/protocol/client"
	pb "github.com/keelvm/keel/protocol/grpc"
	"golang.org/x/sys/unix"
)

const (
	// answerBound is how fast an RPC that shares nothing with a stalled
	// start must answer while it stalls (issue 11). A lock held across a
	// start would hold it for the whole stall (stallTimeout), so a bound
	// far below that proves nothing is locked; it stays well above what 13
	// RPCs against a real agent take while containers start on a loaded
	// 2-core machine (1 s was a flake risk there).
	answerBound = 10 * time.Second
	// lifecycleBound bounds another container's create or start: a real
	// launch under this shared machine's load, yet far below the stall
	// (stallTimeout), so one queued behind a stalled start still fails.
	lifecycleBound = 15 * time.Second
	// stallTimeout is the agent's --launch-timeout here: the stalls last
	// the whole test unless it ends them.
	stallTimeout = 120 * time.Second
)

// startAgent runs the keel-agent binary in host mode with args and returns a
// client; the agent is stopped and checked for leftovers at cleanup.
func startAgent(t *testing.T, ids []string, args ...string) *client.Client {
	t.Helper()
	// Registered first, so it runs after the agent stopped.
	t.Cleanup(func() {
		for _, id := range ids {
			if n := containertest.KillCgroup("keel", id); n > 0 {
				t.Errorf("killed %d processes of %s left behind", n, id)
			}
		}
	})
	a := containertest.StartAgent(t, containertest.AgentOptions{Bin: agentBin, Args: args, StopTimeout: 20 * time.Second})
	return a.Dial(t)
}

// initPid finds a created container's init (the only process in its
// cgroup until it starts).
func initPid(t *testing.T, id string) int {
	t.Helper()
	for _, root := range []string{"/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		b, err := os.ReadFile(filepath.Join(root, "keel", id, "cgroup.procs"))
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) == 1 {
			pid, err := strconv.Atoi(f[0])
			if err == nil {
				return pid
			}
		}
		t.Fatalf("cgroup of %s holds %q, want its init alone", id, b)
	}
	t.Fatalf("no cgroup for %s", id)
	return 0
}

// timed runs call in the background and returns how long it took; it fails
// the test (without waiting) when call errs or takes longer than bound.
func timed(t *testing.T, bound time.Duration, what string, call func(ctx context.Context) error) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*bound)
	defer cancel()
	done := make(chan error, 1)
	t0 := time.Now()
	go func() { done <- call(ctx) }()
	select {
	case err := <-done:
		d := time.Since(t0)
		if err != nil {
			t.Fatalf("%s during the stalls: %v after %v", what, err, d)
		}
		if d > bound {
			t.Fatalf("%s during the stalls took %v, over %v", what, d, bound)
		}
		return d
	case <-time.After(bound):
		t.Fatalf("%s during the stalls: no answer within %v (behind a stalled start?)", what, bound)
		return 0
	}
}

// TestStalledStartsBlockNothing: against the real agent over ttrpc, one
// CreateContainer is stalled by a createRuntime hook that sleeps and one
// StartContainer by an init stopped before it execs its program (as a
// workload sharing its pid namespace can do). Meanwhile Health, GetMetrics,
// ListInterfaces and StatsContainer of a running container answer within
// answerBound, and a further container is created and started: no lock is
// held across a start. Ending the stalls fails both starts cleanly.
func TestStalledStartsBlockNothing(t *testing.T) {
	base := fmt.Sprintf("stall-%d", os.Getpid())
	running, hooked, stopped, another := base+"-running", base+"-hook", base+"-stopped", base+"-another"
	c := startAgent(t, []string{running, hooked, stopped, another}, "--launch-timeout", stallTimeout.String())
	a := c.Agent
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, id := range []string{running, stopped} {
		if _, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: id, OCI: pbSpec("/bin/sleep", "1000")}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: running}); err != nil {
		t.Fatal(err)
	}

	// Stall 1: CreateContainer held in a createRuntime hook.
	pidFile := filepath.Join(t.TempDir(), "hook.pid")
	spec := pbSpec("/bin/true")
	spec.Hooks = &pb.Hooks{CreateRuntime: []*pb.Hook{{Path: "/bin/sh", Timeout: int64(stallTimeout / time.Second),
		Args: []string{"sh", "-c", "echo $$ > " + pidFile + "; exec sleep 1000"}}}}
	createDone := make(chan error, 1)
	go func() {
		_, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: hooked, OCI: spec})
		createDone <- err
	}()
	var hookPid int
	for deadline := time.Now().Add(60 * time.Second); hookPid == 0; {
		if b, err := os.ReadFile(pidFile); err == nil {
			hookPid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		select {
		case err := <-createDone:
			t.Fatalf("stalled create returned before its hook ran: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the createRuntime hook never ran")
		}
	}

	// Stall 2: StartContainer of an init stopped before it execs.
	stoppedInit := initPid(t, stopped)
	if err := unix.Kill(stoppedInit, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	startDone := make(chan error, 1)
	go func() {
		_, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: stopped})
		startDone <- err
	}()
	select {
	case err := <-startDone:
		t.Fatalf("StartContainer of a stopped init returned: %v", err)
	case <-time.After(500 * time.Millisecond):
	}

	// Both starts are stalled now.
	var health time.Duration
	for range 10 {
		health = max(health, timed(t, answerBound, "Health", func(ctx context.Context) error {
			r, err := c.Health.Check(ctx, &pb.CheckRequest{})
			if err == nil && r.Status != pb.HealthCheckResponse_SERVING {
				err = fmt.Errorf("status %v", r.Status)
			}
			return err
		}))
	}
	metrics := timed(t, answerBound, "GetMetrics", func(ctx context.Context) error {
		r, err := a.GetMetrics(ctx, &pb.GetMetricsRequest{})
		if err == nil && !strings.Contains(r.Metrics, "keel_containers ") {
			err = fmt.Errorf("no keel_containers in %q", r.Metrics)
		}
		return err
	})
	ifaces := timed(t, answerBound, "ListInterfaces", func(ctx context.Context) error {
		r, err := a.ListInterfaces(ctx, &pb.ListInterfacesRequest{})
		if err == nil && len(r.Interfaces) == 0 {
			err = fmt.Errorf("no interface listed")
		}
		return err
	})
	stats := timed(t, answerBound, "StatsContainer of another container", func(ctx context.Context) error {
		r, err := a.StatsContainer(ctx, &pb.StatsContainerRequest{ContainerId: running})
		if err == nil && r.CgroupStats.GetPidsStats().GetCurrent() != 1 {
			err = fmt.Errorf("pids %v, want its sleep", r.CgroupStats.GetPidsStats())
		}
		return err
	})
	create := timed(t, lifecycleBound, "CreateContainer of another container", func(ctx context.Context) error {
		_, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: another, OCI: pbSpec("/bin/sleep", "1000")})
		return err
	})
	start := timed(t, lifecycleBound, "StartContainer of another container", func(ctx context.Context) error {
		_, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: another})
		return err
	})
	t.Logf("during the stalls: Health max %v (10 calls), GetMetrics %v, ListInterfaces %v, StatsContainer %v, another create %v + start %v",
		health, metrics, ifaces, stats, create, start)
	select {
	case err := <-createDone:
		t.Fatalf("the stalled create returned meanwhile: %v", err)
	case err := <-startDone:
		t.Fatalf("the stalled start returned meanwhile: %v", err)
	default:
	}

	// End the stalls: the hook dies, the stopped init is killed. Both
	// starts fail and answer now, not at the launch timeout.
	unix.Kill(hookPid, unix.SIGKILL)
	unix.Kill(stoppedInit, unix.SIGKILL)
	for what, ch := range map[string]chan error{"stalled create": createDone, "stalled start": startDone} {
		select {
		case err := <-ch:
			if err == nil {
				t.Errorf("%s succeeded after its stall was killed", what)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not return once its stall was killed", what)
		}
	}
	for _, id := range []string{running, stopped, another} {
		if _, err := a.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: id, Timeout: 10}); err != nil {
			t.Errorf("RemoveContainer %s: %v", id, err)
		}
	}
}
