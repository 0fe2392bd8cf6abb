package katacompat

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "github.com/keelvm/keel/protocol/grpc"
)

// podEnv is what differs between host mode and the VM.
type podEnv struct {
	// put writes a file where the agent sees it.
	put func(ctx context.Context, path string, data []byte, perm uint32) error
	// limits reads app1's memory limit and CPU quota from the cgroup the
	// agent placed it in, checking that cgroup is cgroupPath.
	limits func(ctx context.Context, t *testing.T, cgroupPath string) (memory, quota string)
	// lowerOOM: the agent can lower oom_score_adj (CAP_SYS_RESOURCE).
	lowerOOM bool
	// extraMounts are added to every app container (e.g. shmtool).
	extraMounts []*pb.Mount
	// keep skips DestroySandbox (the guest would power off).
	keep bool
}

const (
	app1Memory = 64 << 20
	app1Quota  = 50000
	shmKey     = "4242"
	shmText    = "hello-from-app1"
)

func (p Pod) app1ID() string { return p.ID + "-app1" }
func (p Pod) app2ID() string { return p.ID + "-app2" }

func (p Pod) containerIDs() []string { return []string{p.app2ID(), p.app1ID(), p.ID} }

// cgroupParent is where the converted systemd cgroupsPath puts cid.
func (p Pod) cgroupParent(cid string) string {
	qos := "besteffort"
	if cid == p.app1ID() {
		qos = "burstable"
	}
	return fmt.Sprintf("kubepods-%s-pod%s.slice/cri-containerd", qos, p.UID)
}

// report prints, one key=value per line, what the assertions read from
// inside a container.
const report = `echo "pid=$$"
echo "pidns=$(readlink /proc/self/ns/pid)"
echo "ipcns=$(readlink /proc/self/ns/ipc)"
echo "utsns=$(readlink /proc/self/ns/uts)"
echo "hostname=$(hostname)"
echo "etc-hostname=$(cat /etc/hostname)"
echo "hosts=$(grep -c kata-pod /etc/hosts)"
echo "resolv=$(head -n1 /etc/resolv.conf)"
echo "nofile=$(grep 'open files' /proc/self/limits | tr -s ' ' | cut -d' ' -f4,5)"
echo "seccomp=$(grep '^Seccomp:' /proc/self/status | tr -d ' \t' | cut -d: -f2)"
echo "oom=$(cat /proc/self/oom_score_adj)"
echo "sleepers=$(ps -o comm | grep -c '^sleep')"
echo "unpriv=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start)"
echo "devshm=$(cat /dev/shm/marker 2>/dev/null)"
`

// runPod drives the pod through the agent as Kata's runtime would and
// checks from inside the containers: shared IPC (a SysV segment), pid
// namespaces per shareProcessNamespace, hostname and the CRI files,
// rlimits, seccomp, OOM score, and the cgroup limits at the converted
// systemd path. put writes a file where the agent sees SharedDir.
func runPod(t *testing.T, a pb.AgentServiceService, p Pod, env podEnv) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, cid := range []string{p.app1ID(), p.app2ID()} {
		files := p.Files(cid)
		for dst, content := range map[string]string{
			"/etc/hosts":           "127.0.0.1\tlocalhost\n10.244.0.7\tkata-pod\n",
			"/etc/hostname":        p.Hostname + "\n",
			"/etc/resolv.conf":     strings.Join(p.DNS, "\n") + "\n",
			"/dev/termination-log": "",
		} {
			if err := env.put(ctx, files[dst], []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	_, err := a.CreateSandbox(ctx, p.CreateSandbox())
	must("CreateSandbox", err)
	defer func() {
		for _, cid := range p.containerIDs() {
			a.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: cid, Timeout: 10})
		}
		if env.keep {
			return
		}
		if _, err := a.DestroySandbox(ctx, &pb.DestroySandboxRequest{}); err != nil {
			t.Errorf("DestroySandbox: %v", err)
		}
	}()
	start := func(req *pb.CreateContainerRequest) {
		t.Helper()
		if req.ContainerId != p.ID {
			req.OCI.Mounts = append(req.OCI.Mounts, env.extraMounts...)
		}
		_, err := a.CreateContainer(ctx, req)
		must("CreateContainer "+req.ContainerId, err)
		_, err = a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: req.ContainerId})
		must("StartContainer "+req.ContainerId, err)
	}
	pause := p.Pause("/bin/sleep", "1000000")
	if !env.lowerOOM {
		// Lowering oom_score_adj needs CAP_SYS_RESOURCE, which a test
		// host may withhold (the guest agent, PID 1, has it).
		t.Logf("no CAP_SYS_RESOURCE here: the pause's oom_score_adj -998 becomes 0")
		pause.OCI.Process.OOMScoreAdj = 0
	}
	start(pause)

	app1 := p.App(p.app1ID(), Resources{MemoryLimit: app1Memory, CPUShares: 256, CPUQuota: app1Quota, CPUPeriod: 100000, OOMScoreAdj: 968},
		"/bin/sh", "-c", "shmtool make "+shmKey+" "+shmText+" || exit 1\necho pod-shm > /dev/shm/marker\n"+report+"echo END\nexec sleep 1000000")
	if app1.SandboxPidns != p.ShareProcessNamespace {
		t.Fatalf("corpus: app sandbox_pidns %v", app1.SandboxPidns)
	}
	start(app1)
	out1 := readUntil(ctx, t, a, p.app1ID(), "END\n")

	app2 := p.App(p.app2ID(), Resources{CPUShares: 2, OOMScoreAdj: 1000},
		"/bin/sh", "-c", report+"echo \"shm=$(shmtool read "+shmKey+")\"")
	start(app2)
	out2 := readUntil(ctx, t, a, p.app2ID(), "")
	w, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: p.app2ID()})
	must("WaitProcess app2", err)
	if w.Status != 0 {
		t.Errorf("app2 exited %d", w.Status)
	}

	r1, r2 := parse(out1), parse(out2)
	t.Logf("app1:\n%sapp2:\n%s", out1, out2)
	for name, r := range map[string]map[string]string{"app1": r1, "app2": r2} {
		for k, want := range map[string]string{
			"hostname": p.Hostname, "etc-hostname": p.Hostname, "hosts": "1", "resolv": p.DNS[0],
			"nofile": "1024 1024", "seccomp": "2",
		} {
			if r[k] != want {
				t.Errorf("%s: %s=%q, want %q", name, k, r[k], want)
			}
		}
	}
	if r1["oom"] != "968" || r2["oom"] != "1000" {
		t.Errorf("oom_score_adj %q and %q, want 968 and 1000", r1["oom"], r2["oom"])
	}
	if p.UnprivilegedPorts && (r1["unpriv"] != "0" || r2["unpriv"] != "0") {
		t.Errorf("ip_unprivileged_port_start %q and %q in the pod's network namespace, want the pause's 0", r1["unpriv"], r2["unpriv"])
	}
	// /dev/shm: the sandbox's (ephemeral storage) in every container when
	// Kata sent one, else a private tmpfs each (handleShm).
	if want := map[bool]string{true: "pod-shm", false: ""}[p.ShmSize > 0]; r1["devshm"] != "pod-shm" || r2["devshm"] != want {
		t.Errorf("/dev/shm/marker written by app1: app1 reads %q, app2 %q (want %q: shm size %d)", r1["devshm"], r2["devshm"], want, p.ShmSize)
	}
	if r2["shm"] != shmText {
		t.Errorf("app2 reads SysV segment %s as %q, want %q made by app1 (shared IPC namespace)", shmKey, r2["shm"], shmText)
	}
	if r1["ipcns"] == "" || r1["ipcns"] != r2["ipcns"] || r1["utsns"] != r2["utsns"] {
		t.Errorf("ipc/uts namespaces differ: %q/%q and %q/%q", r1["ipcns"], r1["utsns"], r2["ipcns"], r2["utsns"])
	}
	if p.ShareProcessNamespace {
		// One pid namespace: the pause's sleep and app1's are visible.
		if r1["pidns"] != r2["pidns"] || r1["pid"] == "1" || r2["pid"] == "1" || r2["sleepers"] != "2" {
			t.Errorf("shared pid namespace: app1 %s pid %s, app2 %s pid %s sees %s sleepers (want one namespace, the pause as pid 1, 2 sleepers)",
				r1["pidns"], r1["pid"], r2["pidns"], r2["pid"], r2["sleepers"])
		}
	} else if r1["pidns"] == r2["pidns"] || r1["pid"] != "1" || r2["pid"] != "1" || r2["sleepers"] != "0" {
		t.Errorf("own pid namespaces: app1 %s pid %s, app2 %s pid %s sees %s sleepers (want two namespaces, each its pid 1, no other sleeper)",
			r1["pidns"], r1["pid"], r2["pidns"], r2["pid"], r2["sleepers"])
	}
	cgPath := path.Join("/", p.cgroupParent(p.app1ID()), p.app1ID())
	mem, quota := env.limits(ctx, t, cgPath)
	if mem != fmt.Sprint(app1Memory) || quota != fmt.Sprint(app1Quota) {
		t.Errorf("app1 memory limit %q, cpu quota %q at %s; want %d and %d", mem, quota, cgPath, app1Memory, app1Quota)
	}
}

// readUntil reads the init's stdout until it ends with marker ("" = EOF).
func readUntil(ctx context.Context, t *testing.T, a pb.AgentServiceService, cid, marker string) string {
	t.Helper()
	var b strings.Builder
	for marker == "" || !strings.HasSuffix(b.String(), marker) {
		r, err := a.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: cid, Len: 4096})
		if err != nil {
			t.Fatalf("ReadStdout %s: %v (so far %q)", cid, err, b.String())
		}
		if len(r.Data) == 0 {
			if marker != "" {
				r, _ := a.ReadStderr(ctx, &pb.ReadStreamRequest{ContainerId: cid, Len: 4096})
				t.Fatalf("%s ended before %q: stdout %q stderr %q", cid, marker, b.String(), r.GetData())
			}
			break
		}
		b.Write(r.Data)
	}
	return b.String()
}

func parse(out string) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			m[k] = v
		}
	}
	return m
}

// canLowerOOMScore reports whether this process has CAP_SYS_RESOURCE.
func canLowerOOMScore() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<24) != 0
		}
	}
	return false
}
