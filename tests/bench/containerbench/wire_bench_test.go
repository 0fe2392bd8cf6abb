package containerbench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keelvm/keel/agent/container/containertest"
	"github.com/keelvm/keel/agent/ociconv"
	"github.com/keelvm/keel/protocol/client"
	pb "github.com/keelvm/keel/protocol/grpc"
)

// The wire tier (P1/P2 as a host runtime pays them): the real keel-agent
// binary in host mode, its state on a tmpfs as the guest's /run is, driven
// over a unix socket with protocol/client; the baselines are Debian's runc
// with its state on a tmpfs too (runc's default root, /run/runc, is one),
// running the same spec on the same rootfs. Each container's init is the
// agent binary re-executed by libcontainer, so what the agent binary does
// before reaching libcontainer's init is timed here and not in-process.

// tmpfsDir mounts a fresh tmpfs on a temporary directory, unmounted when tb
// ends (register it before anything that keeps files there).
func tmpfsDir(tb testing.TB) string {
	tb.Helper()
	dir := tb.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0700"); err != nil {
		tb.Fatalf("unable to mount a tmpfs on %s: %v", dir, err)
	}
	tb.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			tb.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

var (
	agentBinOnce sync.Once
	agentBinPath string
	agentBinErr  error
)

// agentBinary is $KEEL_AGENT_BIN (make bench sets it to build/keel-agent),
// or else keel-agent built once into a temporary directory.
func agentBinary(tb testing.TB) string {
	tb.Helper()
	agentBinOnce.Do(func() {
		if p := os.Getenv("KEEL_AGENT_BIN"); p != "" {
			agentBinPath = p
			return
		}
		dir, err := os.MkdirTemp("", "keel-bench-agent-")
		if err != nil {
			agentBinErr = err
			return
		}
		agentBinPath, agentBinErr = containertest.AgentBinary(dir)
	})
	if agentBinErr != nil {
		tb.Fatal(agentBinErr)
	}
	return agentBinPath
}

// startAgent runs keel-agent in host mode with its state on a tmpfs and
// returns a client connected over its unix socket. Cleanup stops the agent
// (which removes its containers) and kills whatever of ids is left.
func startAgent(tb testing.TB, ids *[]string) pb.AgentServiceService {
	tb.Helper()
	bin := agentBinary(tb)
	state := tmpfsDir(tb)
	dir := tb.TempDir()
	sock := "unix://" + filepath.Join(dir, "agent.sock")
	logf, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		tb.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--addr", sock, "--state-root", filepath.Join(state, "keel"), "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	exited, err := startReaped(cmd)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = cmd.Process.Signal(unix.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			tb.Error("keel-agent did not stop within 30 s of SIGTERM")
		}
		for _, id := range *ids {
			if n := containertest.KillCgroup("keel", id); n > 0 {
				tb.Errorf("killed %d processes of %s left behind", n, id)
			}
		}
		if tb.Failed() {
			b, _ := os.ReadFile(logf.Name())
			tb.Logf("agent log:\n%s", b)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.Dial(ctx, sock)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c.Agent
}

// lifecycleTrue is what a host runtime does for `run /bin/true` without a
// terminal: CreateContainer, StartContainer, ReadStdout until EOF,
// WaitProcess, RemoveContainer.
func lifecycleTrue(ctx context.Context, a pb.AgentServiceService, id string) error {
	if err := runContainer(ctx, a, id, "/bin/true"); err != nil {
		return err
	}
	if n, err := drainStdout(ctx, a, id, "", 32<<10); err != nil || n != 0 {
		return fmt.Errorf("ReadStdout: %d bytes, %v", n, err)
	}
	w, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: id})
	if err != nil {
		return fmt.Errorf("WaitProcess: %w", err)
	}
	if w.Status != 0 {
		return fmt.Errorf("/bin/true: status %d", w.Status)
	}
	if _, err := a.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: id}); err != nil {
		return fmt.Errorf("RemoveContainer: %w", err)
	}
	return nil
}

// BenchmarkAgentLifecycle (P1, wire tier): create+start+wait+remove of
// /bin/true through the keel-agent binary over a unix socket.
func BenchmarkAgentLifecycle(b *testing.B) {
	var ids []string
	a := startAgent(b, &ids)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	var lat []time.Duration
	for i := 0; b.Loop(); i++ {
		id := fmt.Sprintf("wire-%d-%d", os.Getpid(), i)
		ids = append(ids, id)
		t0 := time.Now()
		if err := lifecycleTrue(ctx, a, id); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.ReportMetric(ms(percentile(lat, 0.5)), "median-ms")
}

// runcBundle writes the spec of pbSpec(args) as a runc bundle, in the cgroup
// runcCgParent/id, and returns its directory.
func runcBundle(tb testing.TB, id string, args ...string) string {
	tb.Helper()
	spec, err := ociconv.FromPB(pbSpec(args...))
	if err != nil {
		tb.Fatal(err)
	}
	spec.Linux.CgroupsPath = "/" + runcCgParent + "/" + id
	bundle := tb.TempDir()
	js, err := json.Marshal(spec)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), js, 0o644); err != nil {
		tb.Fatal(err)
	}
	return bundle
}

// BenchmarkRuncRunTmpfs (P1 wire-tier baseline): `runc run` of /bin/true
// with the same spec and rootfs, runc's state on a tmpfs.
func BenchmarkRuncRunTmpfs(b *testing.B) {
	rt := newRuncOn(b, tmpfsDir(b))
	var lat []time.Duration
	for i := 0; b.Loop(); i++ {
		// A cgroup per container, as the agent makes; runc removes it.
		id := fmt.Sprintf("keel-bench-run-%d-%d", os.Getpid(), i)
		bundle := runcBundle(b, id, "/bin/true")
		t0 := time.Now()
		if err := rt.run("run", "--bundle", bundle, id); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.ReportMetric(ms(percentile(lat, 0.5)), "median-ms")
}

// BenchmarkAgentExec (P2, wire tier): exec of /bin/true in a running
// container through the keel-agent binary over a unix socket: ExecProcess,
// ReadStdout until EOF, WaitProcess.
func BenchmarkAgentExec(b *testing.B) {
	id := fmt.Sprintf("wire-exec-%d", os.Getpid())
	ids := []string{id}
	a := startAgent(b, &ids)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	if err := runContainer(ctx, a, id, "/bin/sleep", "1000"); err != nil {
		b.Fatal(err)
	}
	var lat []time.Duration
	for i := 0; b.Loop(); i++ {
		t0 := time.Now()
		if err := execTrue(ctx, a, id, fmt.Sprintf("x%d", i)); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.ReportMetric(ms(percentile(lat, 0.5)), "median-ms")
}

// BenchmarkRuncExecTmpfs (P2 wire-tier baseline): `runc exec` of /bin/true
// in a container `runc run -d` started from the same spec, runc's state on a
// tmpfs.
func BenchmarkRuncExecTmpfs(b *testing.B) {
	rt := newRuncOn(b, tmpfsDir(b))
	benchRuncExec(b, rt, fmt.Sprintf("keel-bench-exec-tmpfs-%d", os.Getpid()))
}
