package containerbench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keelvm/keel/agent/container/containertest"
	"github.com/keelvm/keel/agent/ociconv"
	"github.com/keelvm/keel/protocol/client"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/bench/guestbench"
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
// or else keel-agent built once into a temporary directory the way `make
// agent` builds it (static, stripped: buildLikeAgent), so that a container
// init re-executes the same kind of binary as in the guest.
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
		agentBinPath = filepath.Join(dir, "keel-agent")
		agentBinErr = buildLikeAgent("github.com/keelvm/keel/cmd/keel-agent", agentBinPath)
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
	a, _ := startAgentPid(tb, ids)
	return a
}

// startAgentPid is startAgent, also returning the agent's pid.
func startAgentPid(tb testing.TB, ids *[]string) (pb.AgentServiceService, int) {
	tb.Helper()
	return startAgentBin(tb, agentBinary(tb), ids)
}

// startAgentBin is startAgentPid for a given keel-agent binary; env, if
// any, changes the agent's environment: KEY=VALUE sets, a bare KEY unsets.
func startAgentBin(tb testing.TB, bin string, ids *[]string, env ...string) (pb.AgentServiceService, int) {
	tb.Helper()
	a, pid, _ := startAgentBinAt(tb, bin, ids, env...)
	return a, pid
}

// startAgentBinAt is startAgentBin that also returns the agent's address,
// for more connections (protocol/outputreader dials its own).
func startAgentBinAt(tb testing.TB, bin string, ids *[]string, env ...string) (pb.AgentServiceService, int, string) {
	tb.Helper()
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
	if len(env) > 0 {
		cmd.Env = agentEnv(env)
	}
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
	return c.Agent, cmd.Process.Pid, sock
}

// agentEnv is this process's environment changed by env (KEY=VALUE sets,
// a bare KEY unsets).
func agentEnv(env []string) []string {
	drop := map[string]bool{}
	for _, e := range env {
		k, _, _ := strings.Cut(e, "=")
		drop[k] = true
	}
	var out []string
	for _, e := range os.Environ() {
		if k, _, _ := strings.Cut(e, "="); !drop[k] {
			out = append(out, e)
		}
	}
	for _, e := range env {
		if strings.Contains(e, "=") {
			out = append(out, e)
		}
	}
	return out
}

// cpuTime is the CPU time pid and its reaped children used so far
// (utime+stime+cutime+cstime of /proc/<pid>/stat, in clock ticks of 10 ms):
// for the agent that covers the container inits and bootstrap stages it
// reaped. On a loaded machine CPU time moves much less than wall time.
func cpuTime(tb testing.TB, pid int) time.Duration {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	var ticks int64
	for _, i := range []int{11, 12, 13, 14} { // fields 14-17
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			tb.Fatalf("/proc/%d/stat: %v", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// childrenCPU is the CPU time of this process's reaped children.
func childrenCPU(tb testing.TB) time.Duration {
	tb.Helper()
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_CHILDREN, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// lifecycleTrue and lifecyclePhases run guestbench.LifecyclePhases, the
// sequence the in-guest tier times too, on this package's rootfs.
func lifecycleTrue(ctx context.Context, a pb.AgentServiceService, id string) error {
	_, err := lifecyclePhases(ctx, a, id)
	return err
}

func lifecyclePhases(ctx context.Context, a pb.AgentServiceService, id string) ([nPhases]time.Duration, error) {
	return guestbench.LifecyclePhases(ctx, a, rootfs, id)
}

const nPhases = guestbench.NPhases

var phaseUnits = guestbench.PhaseUnits

// BenchmarkAgentLifecycle (P1, wire tier): create+start+wait+remove of
// /bin/true through the keel-agent binary over a unix socket. Besides the
// whole lifecycle's median it reports each phase's median (create-ms,
// start-ms, run-ms, remove-ms) to show where a change gained.
func BenchmarkAgentLifecycle(b *testing.B) {
	var ids []string
	a, pid := startAgentPid(b, &ids)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	var lat []time.Duration
	var phases [nPhases][]time.Duration
	cpu0 := cpuTime(b, pid)
	n := 0
	for i := 0; b.Loop(); i++ {
		n++
		id := fmt.Sprintf("wire-%d-%d", os.Getpid(), i)
		ids = append(ids, id)
		t0 := time.Now()
		ph, err := lifecyclePhases(ctx, a, id)
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
		for j := range ph {
			phases[j] = append(phases[j], ph[j])
		}
	}
	b.ReportMetric(ms(cpuTime(b, pid)-cpu0)/float64(n), "cpu-ms/op")
	b.ReportMetric(ms(percentile(lat, 0.5)), "median-ms")
	for j, d := range phases {
		b.ReportMetric(ms(percentile(d, 0.5)), phaseUnits[j])
	}
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
// with the same spec and rootfs, runc's state on a tmpfs, as the agent's;
// runc's cgroup driver is cgroupfs, as libcontainer's in the agent. The
// bundle (a config.json per container, for its cgroup) is written with the
// timer stopped.
func BenchmarkRuncRunTmpfs(b *testing.B) {
	rt := newRuncOn(b, tmpfsDir(b))
	var lat []time.Duration
	cpu0, n := childrenCPU(b), 0
	for i := 0; b.Loop(); i++ {
		n++
		// A cgroup per container, as the agent makes; runc removes it.
		// Writing the bundle is not timed: the agent's side gets its spec
		// in the request, so both time exactly create+start+wait+remove.
		b.StopTimer()
		id := fmt.Sprintf("keel-bench-run-%d-%d", os.Getpid(), i)
		bundle := runcBundle(b, id, "/bin/true")
		b.StartTimer()
		t0 := time.Now()
		if err := rt.run("run", "--bundle", bundle, id); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.ReportMetric(ms(childrenCPU(b)-cpu0)/float64(n), "cpu-ms/op")
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
