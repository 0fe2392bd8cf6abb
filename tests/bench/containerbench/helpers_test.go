package containerbench

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/container"
	"github.com/keelvm/keel/agent/container/containertest"
	"github.com/keelvm/keel/agent/containers"
	"github.com/keelvm/keel/agent/service"
	"github.com/keelvm/keel/init/reaper"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/bench/guestbench"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Cgroup parents: Keel's containers go under cgParent, runc's under
// runcCgParent, so the leftover checks see only this package's.
const (
	cgParent     = "keel-bench"
	runcCgParent = "keel-bench-runc"
)

// agentService is the full AgentService the agent serves: the container
// handlers over the Unimplemented fallback.
type agentService struct {
	fallback
	*containers.RPC
}
type fallback struct{ service.Unimplemented }

var _ pb.AgentServiceService = agentService{}

// newRPC returns the container handlers over a fresh sandbox and its state
// root; cleanup destroys the sandbox and, as a last resort, kills what is
// left in its cgroups.
func newRPC(tb testing.TB, o containers.Options) (*containers.RPC, string) {
	tb.Helper()
	f := false
	root := tb.TempDir()
	sb, err := container.New(container.Config{StateRoot: root, CgroupParent: "/" + cgParent, NoPivotRoot: &f})
	if err != nil {
		tb.Fatal(err)
	}
	o.Sandbox = sb
	r := containers.New(o)
	tb.Cleanup(func() {
		ids := sb.ContainerIDs()
		if _, err := r.DestroySandbox(context.Background(), &pb.DestroySandboxRequest{}); err != nil {
			tb.Errorf("DestroySandbox: %v", err)
			for _, id := range ids {
				containertest.KillCgroup(cgParent, id)
			}
		}
	})
	return r, root
}

// pbProcess is a Kata-like process running args as root.
func pbProcess(args ...string) *pb.Process {
	return pbSpec(args...).Process
}

// pbSpec is a Kata-like CreateContainer spec on the busybox rootfs: the
// in-guest tier's (guestbench.Spec), so both tiers time the same
// container. The runc baselines run the same spec (converted with
// ociconv.FromPB).
func pbSpec(args ...string) *pb.Spec {
	return guestbench.Spec(rootfs, args...)
}

// containerAPI is the part of grpc.AgentService the benchmarks drive,
// served in-process (*containers.RPC) or over the wire (a client).
type containerAPI interface {
	CreateContainer(context.Context, *pb.CreateContainerRequest) (*emptypb.Empty, error)
	StartContainer(context.Context, *pb.StartContainerRequest) (*emptypb.Empty, error)
	ExecProcess(context.Context, *pb.ExecProcessRequest) (*emptypb.Empty, error)
	WaitProcess(context.Context, *pb.WaitProcessRequest) (*pb.WaitProcessResponse, error)
	stdoutReader
}

// runContainer creates and starts a container through the handlers.
func runContainer(ctx context.Context, r containerAPI, id string, args ...string) error {
	if _, err := r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: id, OCI: pbSpec(args...)}); err != nil {
		return fmt.Errorf("CreateContainer %s: %w", id, err)
	}
	if _, err := r.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: id}); err != nil {
		return fmt.Errorf("StartContainer %s: %w", id, err)
	}
	return nil
}

// stdoutReader is the ReadStdout RPC, served in-process or over the wire.
type stdoutReader interface {
	ReadStdout(context.Context, *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error)
}

// drainStdout reads a process's stdout through ReadStdout until EOF, in
// chunks of n bytes, and returns how many bytes came.
func drainStdout(ctx context.Context, r stdoutReader, cid, eid string, n uint32) (int, error) {
	total := 0
	for {
		resp, err := r.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: cid, ExecId: eid, Len: n})
		if err != nil {
			return total, err
		}
		if len(resp.Data) == 0 {
			return total, nil
		}
		total += len(resp.Data)
	}
}

// percentile is the nearest-rank p-th percentile (0 < p <= 1) of d.
func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(i, 0)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// vmRSSKiB reads this process's VmRSS.
func vmRSSKiB() (int, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/self/status")
}

// startReaped starts cmd with the reaper (started by container.New) owning
// wait(2); the channel gets its exit status. cmd's stdio must be files or
// nil, so that no copying goroutine outlives the process.
func startReaped(cmd *exec.Cmd) (<-chan reaper.ExitStatus, error) {
	started := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return reaper.Watch(cmd.Process.Pid, started)
}

// runcTool runs Debian's runc with its own state root and a log file.
type runcTool struct {
	bin, root string
	// log is runc's stdout and stderr, opened once so that no timed run
	// pays for opening it (runc writes nothing there when it succeeds),
	// and emptied before each run so an error quotes only its own run.
	log *os.File
}

func newRunc(tb testing.TB) *runcTool {
	tb.Helper()
	return newRuncOn(tb, tb.TempDir())
}

// newRuncOn is newRunc with runc's state and log in dir.
func newRuncOn(tb testing.TB, dir string) *runcTool {
	tb.Helper()
	bin, err := exec.LookPath("runc")
	if err != nil {
		tb.Skip("runc not installed")
	}
	if err := reaper.Start(); err != nil {
		tb.Fatal(err)
	}
	log, err := os.OpenFile(filepath.Join(dir, "out.log"), os.O_CREATE|os.O_TRUNC|os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { log.Close() })
	return &runcTool{bin: bin, root: filepath.Join(dir, "state"), log: log}
}

// run runs `runc --root R args...` to completion; its stdio goes to a file
// (a pipe would be inherited by a detached container and never reach EOF).
func (rt *runcTool) run(args ...string) error {
	cmd := exec.Command(rt.bin, append([]string{"--root", rt.root}, args...)...)
	// O_APPEND: runc writes after what is there, so truncating is enough.
	if err := rt.log.Truncate(0); err != nil {
		return fmt.Errorf("unable to empty runc's log: %w", err)
	}
	cmd.Stdout, cmd.Stderr = rt.log, rt.log
	st, err := reaper.Command(cmd)
	if err == nil && st.Code != 0 {
		b, _ := os.ReadFile(rt.log.Name())
		err = fmt.Errorf("runc %s: %v: %s", strings.Join(args, " "), st, strings.TrimSpace(string(b)))
	}
	return err
}

// removeCgroupParents removes the (empty) parent cgroups the benchmarks
// created in every hierarchy.
func removeCgroupParents() {
	for _, parent := range []string{cgParent, runcCgParent} {
		dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", parent))
		dirs = append(dirs, filepath.Join("/sys/fs/cgroup", parent))
		for _, d := range dirs {
			os.Remove(d)
		}
	}
}
