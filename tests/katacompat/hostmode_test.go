package katacompat

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/container/containertest"
	"github.com/keelvm/keel/protocol/client"
)

var agentBin, shmtoolBin string

func TestMain(m *testing.M) {
	os.Exit(containertest.HostModeMain(m, func(e *containertest.HostEnv) error {
		agentBin = e.AgentBin
		shmtoolBin = filepath.Join(e.Dir, "shmtool")
		cmd := exec.Command("go", "build", "-o", shmtoolBin, "github.com/keelvm/keel/tests/katacompat/shmtool")
		cmd.Env, cmd.Stderr = append(os.Environ(), "CGO_ENABLED=0"), os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("building shmtool: %w", err)
		}
		return nil
	}))
}

// TestNeedsRoot reports, as a skip with its reason, that this package's
// tests did not run without root (see containertest.RunWithoutRoot).
func TestNeedsRoot(t *testing.T) { containertest.SkipUnlessRoot(t, "the pod corpus's containers") }

// startAgent runs keel-agent as a process on a Unix socket and dials it.
func startAgent(t *testing.T, stateRoot string) (*containertest.Agent, *client.Client) {
	t.Helper()
	a := containertest.StartAgent(t, containertest.AgentOptions{Bin: agentBin, StateRoot: stateRoot, StopTimeout: 15 * time.Second})
	return a, a.Dial(t)
}

// TestKataPodHostMode replays the corpus against keel-agent in host mode,
// with and without shareProcessNamespace.
func TestKataPodHostMode(t *testing.T) {
	for _, share := range []bool{false, true} {
		t.Run(fmt.Sprintf("shareProcessNamespace=%v", share), func(t *testing.T) {
			dir := t.TempDir()
			rootfs := filepath.Join(dir, "rootfs")
			if err := containertest.MakeRootfs(rootfs); err != nil {
				t.Fatal(err)
			}
			if err := copyFile(shmtoolBin, filepath.Join(rootfs, "bin/shmtool")); err != nil {
				t.Fatal(err)
			}
			pod := Pod{
				ID: fmt.Sprintf("pause%d%v", os.Getpid(), share), UID: fmt.Sprintf("%d-%v", os.Getpid(), share),
				Hostname: "kata-pod", DNS: []string{"nameserver 10.96.0.10", "search default.svc.cluster.local"},
				Rootfs: rootfs, SharedDir: filepath.Join(dir, "shared"), ShareProcessNamespace: share,
			}
			a, c := startAgent(t, filepath.Join(dir, "state"))
			defer func() {
				a.Stop(t)
				for _, cid := range pod.containerIDs() {
					containertest.KillCgroup(pod.cgroupParent(cid), cid)
					// The agent removes a container's own cgroup; the
					// pod's slice above it is the test's to remove.
					for _, d := range []string{pod.cgroupParent(cid), filepath.Dir(pod.cgroupParent(cid))} {
						dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", d))
						for _, x := range dirs {
							os.Remove(x)
						}
					}
				}
			}()
			runPod(t, c.Agent, pod, podEnv{put: hostPut, limits: hostLimits, lowerOOM: canLowerOOMScore()})
		})
	}
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

func hostPut(_ context.Context, p string, data []byte, perm uint32) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, data, os.FileMode(perm))
}

// hostLimits reads a container's limits from the host's cgroup v1
// hierarchies at cgroupPath (the path Kata's agent makes of the systemd
// form).
func hostLimits(_ context.Context, t *testing.T, cgroupPath string) (memory, quota string) {
	read := func(hier, file string) string {
		b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", hier, cgroupPath, file))
		if err != nil {
			t.Errorf("cgroup at the converted path: %v", err)
		}
		return strings.TrimSpace(string(b))
	}
	// "cpu" is a directory or a link to "cpu,cpuacct", depending on how
	// the host mounted its v1 hierarchies.
	return read("memory", "memory.limit_in_bytes"), read("cpu", "cpu.cfs_quota_us")
}
