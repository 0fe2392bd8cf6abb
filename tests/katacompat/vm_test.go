package katacompat

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/vmtest"
)

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestKataPodVM replays the corpus (own pid namespaces) against keel-agent
// as PID 1 of a guest, with the sandbox shm storage every container's
// /dev/shm binds; the files the CRI plugin binds and the shmtool probe
// arrive by CopyFile as with shared_fs=none; cgroup v2 limits are
// read from inside app1, which has its own cgroup namespace. The guest then
// runs the spec-field table's cases (TestSpecFieldsMatchRunc) that apply.
func TestKataPodVM(t *testing.T) {
	if why := vmtest.Available(); why != "" {
		t.Skip(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	g, err := vmtest.Boot(ctx, vmtest.Config{Busybox: true, Log: logWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	c, err := g.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a := c.Agent

	pod := Pod{ID: "vmpause", UID: "0b1c2d3e", Hostname: "kata-pod", DNS: []string{"nameserver 10.96.0.10"},
		Rootfs: vmtest.ContainerRootfs, SharedDir: GuestSharedDir, UnprivilegedPorts: true,
		// The ephemeral shm storage (setupStorages) and the /dev/shm binds
		// of handleShm. The virtio-fs share needs virtiofsd and a
		// vhost-user-fs device, which this harness does not give a guest:
		// the files come by CopyFile (Kata's exact requests) as with shared_fs=none.
		SandboxStorages: []*pb.Storage{ShmStorage(64 << 20)}, ShmSize: 64 << 20}
	// CopyFile exactly as Kata's runtime sends it (dir_mode with Go's
	// directory bit).
	put := func(ctx context.Context, dst string, data []byte, perm uint32) error {
		for _, r := range CopyFile(dst, data, perm, 0, 0) {
			if _, err := a.CopyFile(ctx, r); err != nil {
				return fmt.Errorf("CopyFile %s: %w", dst, err)
			}
		}
		return nil
	}
	shm, err := os.ReadFile(shmtoolBin)
	if err != nil {
		t.Fatal(err)
	}
	shmPath := GuestSharedDir + "shmtool"
	if err := put(ctx, shmPath, shm, 0o755); err != nil {
		t.Fatal(err)
	}
	limits := func(ctx context.Context, t *testing.T, cgroupPath string) (string, string) {
		// Each container has its own cgroup namespace on v2 (as with
		// Kata's agent): its cgroup is "/" and /sys/fs/cgroup its own;
		// host mode checks the converted path.
		out := execOut(ctx, t, a, pod.app1ID(), "/bin/sh", "-c", "cat /proc/self/cgroup /sys/fs/cgroup/memory.max 2>&1; cut -d' ' -f1 /sys/fs/cgroup/cpu.max 2>&1")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 3 || lines[0] != "0::/" {
			t.Errorf("app1's cgroup (v2, own namespace) and limits:\n%s", out)
			return "", ""
		}
		return lines[1], lines[2]
	}
	runPod(t, a, pod, podEnv{put: put, limits: limits, lowerOOM: true, keep: true,
		extraMounts: []*pb.Mount{{Destination: "/bin/shmtool", Type: "bind", Source: shmPath, Options: []string{"rbind", "ro"}}}})
	// The same guest then runs the spec-field table (minus the
	// host-only cases), its containers joining the pod's IPC and UTS
	// namespaces.
	t.Run("fields", func(t *testing.T) { testFieldsInGuest(t, a, vmtest.ContainerRootfs) })
}

// execOut runs args in cid (ExecProcess) and returns its stdout.
func execOut(ctx context.Context, t *testing.T, a pb.AgentServiceService, cid string, args ...string) string {
	t.Helper()
	id := fmt.Sprintf("probe-%d", time.Now().UnixNano())
	p := &pb.Process{Args: args, Env: []string{"PATH=/bin:/sbin"}, Cwd: "/", User: &pb.User{}}
	if _, err := a.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: cid, ExecId: id, Process: p}); err != nil {
		t.Fatalf("ExecProcess in %s: %v", cid, err)
	}
	var b strings.Builder
	for {
		r, err := a.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: cid, ExecId: id, Len: 4096})
		if err != nil || len(r.Data) == 0 {
			break
		}
		b.Write(r.Data)
	}
	if _, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: cid, ExecId: id}); err != nil {
		t.Errorf("WaitProcess %s: %v", id, err)
	}
	return b.String()
}
