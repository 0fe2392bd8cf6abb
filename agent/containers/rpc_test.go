package containers_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/container"
	"github.com/keelvm/keel/agent/container/containertest"
	"github.com/keelvm/keel/agent/containers"
	pb "github.com/keelvm/keel/protocol/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// cgParent is per test process: two runs of this package at once (helpers
// sharing a machine) would otherwise share container cgroups such as
// keel-rpc-test/ok and fail with "container's cgroup is not empty".
var cgParent = fmt.Sprintf("keel-rpc-containers-%d", os.Getpid())

func newRPC(t *testing.T) *containers.RPC {
	t.Helper()
	f := false
	sb, err := container.New(container.Config{StateRoot: t.TempDir(), CgroupParent: "/" + cgParent, NoPivotRoot: &f})
	if err != nil {
		t.Fatal(err)
	}
	r := containers.New(containers.Options{Sandbox: sb, ExecIOLinger: time.Second})
	t.Cleanup(func() {
		if _, err := r.DestroySandbox(context.Background(), &pb.DestroySandboxRequest{}); err != nil {
			t.Errorf("DestroySandbox: %v", err)
		}
	})
	return r
}

// spec is a Kata-like CreateContainer OCI spec for the busybox rootfs.
func spec(args ...string) *pb.Spec {
	caps := []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}
	return &pb.Spec{
		Version:  "1.0.2",
		Hostname: "rpchost",
		Root:     &pb.Root{Path: rootfs, Readonly: true},
		Process: &pb.Process{
			Args: args, Env: []string{"PATH=/bin", "TERM=xterm"}, Cwd: "/",
			User:            &pb.User{},
			Capabilities:    &pb.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps},
			Rlimits:         []*pb.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Mounts: []*pb.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "size=1m"}},
		},
		Linux: &pb.Linux{
			Namespaces:    []*pb.LinuxNamespace{{Type: "pid"}, {Type: "network"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"}},
			MaskedPaths:   []string{"/proc/kcore", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/sys", "/proc/sysrq-trigger"},
			Resources:     &pb.LinuxResources{Devices: []*pb.LinuxDeviceCgroup{{Allow: false, Access: "rwm", Major: -1, Minor: -1}}},
		},
	}
}

func readAll(t *testing.T, r *containers.RPC, cid, eid string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var sb strings.Builder
	for {
		resp, err := r.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: cid, ExecId: eid, Len: 32768})
		if err != nil {
			t.Fatalf("ReadStdout: %v (so far %q)", err, sb.String())
		}
		if len(resp.Data) == 0 {
			return sb.String()
		}
		sb.Write(resp.Data)
	}
}

func wait(t *testing.T, r *containers.RPC, cid, eid string) int32 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := r.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: cid, ExecId: eid})
	if err != nil {
		t.Fatalf("WaitProcess: %v", err)
	}
	return resp.Status
}

// noErr returns a checker for (response, error) pairs.
func noErr(t *testing.T) func(any, error) {
	return func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestRPCLifecycle(t *testing.T) {
	r := newRPC(t)
	ctx := context.Background()
	must := noErr(t)
	must(r.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: "sb", Hostname: "sbhost", Dns: []string{"nameserver 192.0.2.1"}}))
	must(r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "web", ExecId: "web", OCI: spec("/bin/sh", "-c", "hostname; cat /etc/resolv.conf; exec sleep 1000")}))
	must(r.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "web"}))

	// exec with stdin
	p := &pb.Process{Args: []string{"/bin/sh", "-c", "read l; echo \"in:$l\"; echo err >&2; exit 7"}, Cwd: "/", Env: []string{"PATH=/bin"}, User: &pb.User{}}
	must(r.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: "web", ExecId: "e1", Process: p}))
	w, err := r.WriteStdin(ctx, &pb.WriteStreamRequest{ContainerId: "web", ExecId: "e1", Data: []byte("ping\n")})
	must(nil, err)
	if w.Len != 5 {
		t.Errorf("WriteStdin len %d", w.Len)
	}
	must(r.CloseStdin(ctx, &pb.CloseStdinRequest{ContainerId: "web", ExecId: "e1"}))
	if out := readAll(t, r, "web", "e1"); out != "in:ping\n" {
		t.Errorf("exec stdout %q", out)
	}
	errResp, err := r.ReadStderr(ctx, &pb.ReadStreamRequest{ContainerId: "web", ExecId: "e1", Len: 100})
	must(nil, err)
	if string(errResp.Data) != "err\n" {
		t.Errorf("exec stderr %q", errResp.Data)
	}
	if st := wait(t, r, "web", "e1"); st != 7 {
		t.Errorf("exec status %d", st)
	}
	// The exec id is free again after WaitProcess.
	if _, err := r.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: "web", ExecId: "e1"}); status.Code(err) != codes.NotFound {
		t.Errorf("second WaitProcess of an exec: %v", err)
	}

	st, err := r.StatsContainer(ctx, &pb.StatsContainerRequest{ContainerId: "web"})
	must(nil, err)
	if st.CgroupStats.PidsStats.Current < 1 || len(st.NetworkStats) == 0 || st.NetworkStats[0].Name != "lo" {
		t.Errorf("stats %v", st)
	}
	must(r.UpdateContainer(ctx, &pb.UpdateContainerRequest{ContainerId: "web", Resources: &pb.LinuxResources{Pids: &pb.LinuxPids{Limit: 50}}}))
	if b, _ := os.ReadFile(filepath.Join("/sys/fs/cgroup/pids", cgParent, "web", "pids.max")); strings.TrimSpace(string(b)) != "50" {
		t.Errorf("pids.max after update %q", b)
	}
	must(r.PauseContainer(ctx, &pb.PauseContainerRequest{ContainerId: "web"}))
	if _, err := r.PauseContainer(ctx, &pb.PauseContainerRequest{ContainerId: "web"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("double pause: %v", err)
	}
	must(r.ResumeContainer(ctx, &pb.ResumeContainerRequest{ContainerId: "web"}))

	must(r.SignalProcess(ctx, &pb.SignalProcessRequest{ContainerId: "web", Signal: 9}))
	if st := wait(t, r, "web", ""); st != 137 {
		t.Errorf("init status after SIGKILL %d", st)
	}
	// The container is in the pod's UTS namespace, whose hostname is the
	// sandbox's; the spec's own ("rpchost") does not change it (Kata).
	if out := readAll(t, r, "web", ""); out != "sbhost\nnameserver 192.0.2.1\n" {
		t.Errorf("init stdout %q, want the sandbox hostname and its DNS", out)
	}
	must(r.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: "web", Timeout: 5}))
	if _, err := r.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: "web"}); status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "container_id") {
		t.Errorf("WaitProcess on a removed container: %v", err)
	}
}

func TestRPCExecMissingBinaryFailsFast(t *testing.T) {
	r := newRPC(t)
	ctx := context.Background()
	must := noErr(t)
	must(r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "c", OCI: spec("/bin/sleep", "1000")}))
	must(r.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "c"}))
	start := time.Now()
	_, err := r.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: "c", ExecId: "x", Process: &pb.Process{Args: []string{"/no/such/binary"}, Cwd: "/", User: &pb.User{}}})
	if status.Code(err) != codes.InvalidArgument || time.Since(start) > 5*time.Second {
		t.Fatalf("exec of a missing binary: %v after %v", err, time.Since(start))
	}
	t.Logf("missing binary: %v in %v", err, time.Since(start))
}

// TestRPCBadInput: every malformed request gets a status naming the field,
// and nothing is left behind.
func TestRPCBadInput(t *testing.T) {
	containertest.NoGC(t)
	r := newRPC(t)
	ctx := context.Background()
	must := noErr(t)
	// Warm libcontainer's process-wide caches, and have a running
	// container for the exec/signal cases.
	must(r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "ok", OCI: spec("/bin/sleep", "1000")}))
	must(r.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "ok"}))
	// No GC during the counts (NoGC): a pidfd only a GC would close is a
	// leak.
	time.Sleep(50 * time.Millisecond)
	before := containertest.Take(cgParent)

	mod := func(f func(*pb.Spec)) *pb.Spec { s := spec("/bin/true"); f(s); return s }
	proc := func(f func(*pb.Process)) *pb.Process {
		p := &pb.Process{Args: []string{"/bin/true"}, Cwd: "/", User: &pb.User{}}
		f(p)
		return p
	}
	cc := func(id string, s *pb.Spec) func() error {
		return func() error {
			_, err := r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: id, OCI: s})
			return err
		}
	}
	ex := func(cid, eid string, p *pb.Process) func() error {
		return func() error {
			_, err := r.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: cid, ExecId: eid, Process: p})
			return err
		}
	}
	for _, tc := range []struct {
		name  string
		call  func() error
		code  codes.Code
		field string
	}{
		{"empty container_id", cc("", spec("/bin/true")), codes.InvalidArgument, "container_id"},
		{"slash in id", cc("a/b", spec("/bin/true")), codes.InvalidArgument, `container_id "a/b"`},
		{"dotdot id", cc("..", spec("/bin/true")), codes.InvalidArgument, "container_id"},
		{"long id", cc(strings.Repeat("a", 200), spec("/bin/true")), codes.InvalidArgument, "container_id"},
		{"bad exec_id on create", func() error {
			_, err := r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "x1", ExecId: "a b", OCI: spec("/bin/true")})
			return err
		}, codes.InvalidArgument, "exec_id"},
		{"duplicate container", cc("ok", spec("/bin/true")), codes.AlreadyExists, "container_id"},
		{"no spec", cc("x2", nil), codes.InvalidArgument, "OCI"},
		{"no root", cc("x3", mod(func(s *pb.Spec) { s.Root = nil })), codes.InvalidArgument, "OCI.root.path"},
		{"missing rootfs", cc("x4", mod(func(s *pb.Spec) { s.Root.Path = "/nonexistent/rootfs" })), codes.InvalidArgument, "OCI.root.path"},
		{"relative rootfs", cc("x5", mod(func(s *pb.Spec) { s.Root.Path = "rootfs" })), codes.InvalidArgument, "OCI.root.path"},
		{"no process", cc("x6", mod(func(s *pb.Spec) { s.Process = nil })), codes.InvalidArgument, "OCI.process"},
		{"empty args", cc("x7", mod(func(s *pb.Spec) { s.Process.Args = nil })), codes.InvalidArgument, "OCI.process.args"},
		{"unknown namespace", cc("x8", mod(func(s *pb.Spec) { s.Linux.Namespaces = append(s.Linux.Namespaces, &pb.LinuxNamespace{Type: "bogus"}) })), codes.InvalidArgument, `"bogus"`},
		{"bad rlimit", cc("x9", mod(func(s *pb.Spec) { s.Process.Rlimits[0].Type = "NOFILE" })), codes.InvalidArgument, "OCI.process.rlimits[0].type"},
		{"bad oom_score_adj", cc("x10", mod(func(s *pb.Spec) { s.Process.OOMScoreAdj = 4000 })), codes.InvalidArgument, "oom_score_adj"},
		{"missing init binary", cc("x11", mod(func(s *pb.Spec) { s.Process.Args = []string{"/bin/missing"} })), codes.InvalidArgument, "missing"},
		{"storages", func() error {
			_, err := r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "x12", OCI: spec("/bin/true"), Storages: []*pb.Storage{{Driver: "blk"}}})
			return err
		}, codes.Unimplemented, "storages"},
		{"devices", func() error {
			_, err := r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "x13", OCI: spec("/bin/true"), Devices: []*pb.Device{{Id: "d"}}})
			return err
		}, codes.Unimplemented, "devices"},
		{"passfd port without listener", func() error {
			_, err := r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "x14", OCI: spec("/bin/true"), StdoutPort: 5000})
			return err
		}, codes.Unimplemented, "stdout_port"},
		{"start unknown", func() error {
			_, err := r.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "nope"})
			return err
		}, codes.NotFound, `container_id "nope"`},
		{"start running", func() error {
			_, err := r.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "ok"})
			return err
		}, codes.FailedPrecondition, "ok"},
		{"exec unknown container", ex("nope", "e", proc(func(*pb.Process) {})), codes.NotFound, "container_id"},
		{"exec bad exec_id", ex("ok", "../e", proc(func(*pb.Process) {})), codes.InvalidArgument, "exec_id"},
		{"exec no process", ex("ok", "e", nil), codes.InvalidArgument, "process"},
		{"exec relative cwd", ex("ok", "e", proc(func(p *pb.Process) { p.Cwd = "tmp" })), codes.InvalidArgument, "process.cwd"},
		{"exec bad env", ex("ok", "e", proc(func(p *pb.Process) { p.Env = []string{"=x"} })), codes.InvalidArgument, "process.env[0]"},
		{"exec missing binary", ex("ok", "e", proc(func(p *pb.Process) { p.Args = []string{"/bin/nothere"} })), codes.InvalidArgument, "nothere"},
		{"exec duplicate init id", ex("ok", "ok", proc(func(*pb.Process) {})), codes.AlreadyExists, "exec_id"},
		{"signal 0", func() error {
			_, err := r.SignalProcess(ctx, &pb.SignalProcessRequest{ContainerId: "ok", Signal: 0})
			return err
		}, codes.InvalidArgument, "signal"},
		{"signal 99", func() error {
			_, err := r.SignalProcess(ctx, &pb.SignalProcessRequest{ContainerId: "ok", Signal: 99})
			return err
		}, codes.InvalidArgument, "signal"},
		{"signal unknown exec", func() error {
			_, err := r.SignalProcess(ctx, &pb.SignalProcessRequest{ContainerId: "ok", ExecId: "ghost", Signal: 15})
			return err
		}, codes.NotFound, `exec_id "ghost"`},
		{"wait unknown exec", func() error {
			_, err := r.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: "ok", ExecId: "ghost"})
			return err
		}, codes.NotFound, "exec_id"},
		{"read len 0", func() error {
			_, err := r.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: "ok", Len: 0})
			return err
		}, codes.InvalidArgument, "len"},
		{"resize without tty", func() error {
			_, err := r.TtyWinResize(ctx, &pb.TtyWinResizeRequest{ContainerId: "ok", Row: 10, Column: 10})
			return err
		}, codes.InvalidArgument, "terminal"},
		{"resize rows above 65535", func() error {
			_, err := r.TtyWinResize(ctx, &pb.TtyWinResizeRequest{ContainerId: "ok", Row: 1 << 16, Column: 10})
			return err
		}, codes.InvalidArgument, "row 65536"},
		{"resize columns above 65535", func() error {
			_, err := r.TtyWinResize(ctx, &pb.TtyWinResizeRequest{ContainerId: "ok", Row: 10, Column: 1 << 20})
			return err
		}, codes.InvalidArgument, "column 1048576"},
		{"update nil resources", func() error {
			_, err := r.UpdateContainer(ctx, &pb.UpdateContainerRequest{ContainerId: "ok"})
			return err
		}, codes.InvalidArgument, "resources"},
		{"resume running", func() error {
			_, err := r.ResumeContainer(ctx, &pb.ResumeContainerRequest{ContainerId: "ok"})
			return err
		}, codes.FailedPrecondition, "not paused"},
		{"remove unknown", func() error {
			_, err := r.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: "nope"})
			return err
		}, codes.NotFound, "container_id"},
		{"sandbox storages", func() error {
			_, err := r.CreateSandbox(ctx, &pb.CreateSandboxRequest{Storages: []*pb.Storage{{}}})
			return err
		}, codes.Unimplemented, "storages"},
		{"sandbox bad hostname", func() error {
			_, err := r.CreateSandbox(ctx, &pb.CreateSandboxRequest{Hostname: "a/b"})
			return err
		}, codes.InvalidArgument, "hostname"},
		{"sandbox bad module", func() error {
			_, err := r.CreateSandbox(ctx, &pb.CreateSandboxRequest{KernelModules: []*pb.KernelModule{{Name: "../x"}}})
			return err
		}, codes.InvalidArgument, "kernel_modules[0].name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() { done <- tc.call() }()
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("call hung")
			}
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("got %v, want %v naming %q", err, tc.code, tc.field)
			}
		})
	}
	time.Sleep(100 * time.Millisecond)
	if d := before.Diff(containertest.Take(cgParent)); d != "" {
		t.Errorf("bad input left things behind: %s", d)
	}
}

// TestRPCSharedPidnsSignalAll: SIGTERM to the init of a container in the
// sandbox pid namespace reaches its other processes too.
func TestRPCSharedPidnsSignalAll(t *testing.T) {
	r := newRPC(t)
	ctx := context.Background()
	must := noErr(t)
	must(r.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxPidns: true}))
	must(r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "pause", OCI: spec("/bin/sleep", "1000"), SandboxPidns: true}))
	must(r.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "pause"}))
	// The app's init is a shell that traps TERM and keeps a child.
	must(r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "app", OCI: spec("/bin/sh", "-c", "sleep 1000 & wait"), SandboxPidns: true}))
	must(r.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "app"}))
	time.Sleep(100 * time.Millisecond)
	must(r.SignalProcess(ctx, &pb.SignalProcessRequest{ContainerId: "app", Signal: 15}))
	if st := wait(t, r, "app", ""); st != 143 {
		t.Errorf("app init status %d, want 143", st)
	}
	resp, err := r.StatsContainer(ctx, &pb.StatsContainerRequest{ContainerId: "pause"})
	must(nil, err)
	if resp.CgroupStats.PidsStats.Current != 1 {
		t.Errorf("pause container pids %d", resp.CgroupStats.PidsStats.Current)
	}
	// The app's background sleep died with it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join("/sys/fs/cgroup/pids", cgParent, "app", "cgroup.procs"))
		if len(strings.TrimSpace(string(b))) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("app processes left after SIGTERM to init: %q", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestNoSandboxNoPanic: handlers built without a Sandbox answer
// Unavailable for every RPC they own instead of panicking.
func TestNoSandboxNoPanic(t *testing.T) {
	s := reflect.ValueOf(containers.New(containers.Options{}))
	api := reflect.TypeOf((*pb.AgentServiceService)(nil)).Elem()
	n := 0
	for i := 0; i < api.NumMethod(); i++ {
		m := s.MethodByName(api.Method(i).Name)
		if !m.IsValid() {
			continue
		}
		n++
		req := reflect.New(api.Method(i).Type.In(1).Elem())
		out := m.Call([]reflect.Value{reflect.ValueOf(context.Background()), req})
		if err, _ := out[1].Interface().(error); status.Code(err) != codes.Unavailable {
			t.Errorf("%s without a sandbox: %v", api.Method(i).Name, err)
		}
	}
	if n != 17 {
		t.Errorf("RPC implements %d AgentService methods, want 17", n)
	}
}

// TestRPCLaunchTimeoutIsDeadlineExceeded: a create stalled by a hook that
// never returns answers DeadlineExceeded at the launch timeout, and the id
// is free again (nothing left behind).
func TestRPCLaunchTimeoutIsDeadlineExceeded(t *testing.T) {
	f := false
	sb, err := container.New(container.Config{StateRoot: t.TempDir(), CgroupParent: "/" + cgParent, NoPivotRoot: &f, LaunchTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	r := containers.New(containers.Options{Sandbox: sb})
	t.Cleanup(func() { _, _ = r.DestroySandbox(context.Background(), &pb.DestroySandboxRequest{}) })
	ctx := context.Background()
	s := spec("/bin/true")
	s.Hooks = &pb.Hooks{CreateRuntime: []*pb.Hook{{Path: "/bin/sleep", Args: []string{"sleep", "1000"}}}}
	start := time.Now()
	_, err = r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "stalled", OCI: s})
	if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "launch_process_timeout") {
		t.Fatalf("stalled create: %v after %v", err, time.Since(start))
	}
	if d := time.Since(start); d < 2*time.Second || d > 30*time.Second {
		t.Errorf("answered after %v, want about the 2 s launch timeout", d)
	}
	// Rolled back: the same id can be created again.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err = r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "stalled", OCI: spec("/bin/true")})
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("create of the same id after the rollback: %v", err)
	}
}

// TestRPCExecArgsTooBig: an exec whose arguments execve would reject with
// E2BIG fails at once with InvalidArgument naming the limit (it used to
// start "OK" and exit 255); arguments under the limit still run.
func TestRPCExecArgsTooBig(t *testing.T) {
	r := newRPC(t)
	ctx := context.Background()
	must := noErr(t)
	must(r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "c", OCI: spec("/bin/sleep", "1000")}))
	must(r.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "c"}))
	chunk := strings.Repeat("x", 100<<10)
	big := []string{"/bin/true"}
	for range 30 { // 3 MiB
		big = append(big, chunk)
	}
	for name, args := range map[string][]string{
		"3 MiB of args":   big,
		"one 200 KiB arg": {"/bin/true", strings.Repeat("y", 200<<10)},
	} {
		_, err := r.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: "c", ExecId: "big", Process: &pb.Process{Args: args, Cwd: "/", User: &pb.User{}}})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "E2BIG") {
			t.Errorf("%s: %v, want InvalidArgument naming E2BIG", name, err)
		}
	}
	// 100 KiB in 10 args is fine.
	ok := []string{"/bin/true"}
	for range 10 {
		ok = append(ok, strings.Repeat("z", 10<<10))
	}
	must(r.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: "c", ExecId: "ok", Process: &pb.Process{Args: ok, Cwd: "/", User: &pb.User{}}}))
	if code := wait(t, r, "c", "ok"); code != 0 {
		t.Errorf("exec with 100 KiB of args exited %d", code)
	}
}
