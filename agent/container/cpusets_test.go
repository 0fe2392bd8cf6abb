package container

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keelvm/keel/agent/hotplug"
	"github.com/opencontainers/cgroups"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestRefreshCPUSets plays CPUs coming online after the containers were
// created, on the host's real cgroup v1 cpuset hierarchy: the sandbox's
// cgroup parent is limited to the first CPU, so runc gives its containers
// that CPU. RefreshCPUSets widens the parent and the container without
// cpus of its own to every online CPU (its running process may use them
// all), and leaves the container whose spec names the first CPU alone.
func TestRefreshCPUSets(t *testing.T) {
	if cgroups.IsCgroup2UnifiedMode() {
		t.Skip("cgroup v2 host: nothing to refresh (v2 follows the online CPUs by itself)")
	}
	root, err := cgroups.FindCgroupMountpoint("", "cpuset")
	if err != nil {
		t.Skipf("no cgroup v1 cpuset hierarchy: %v", err)
	}
	b, err := os.ReadFile(onlineCPUsFile)
	if err != nil {
		t.Fatal(err)
	}
	online := strings.TrimSpace(string(b))
	if n, err := hotplug.CountCPUList(online); err != nil || n < 2 {
		t.Skipf("needs at least 2 online CPUs (online %q)", online)
	}
	first, _, _ := strings.Cut(strings.Split(online, ",")[0], "-")
	mems, err := os.ReadFile(filepath.Join(root, "cpuset.mems"))
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("keel-cpuset-%d", os.Getpid())
	parent := filepath.Join(root, name)
	if err := os.Mkdir(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// libcontainer created the parent in every v1 hierarchy.
		dirs, _ := filepath.Glob(filepath.Join(filepath.Dir(root), "*", name))
		for _, d := range dirs {
			os.Remove(d)
		}
	})
	for f, v := range map[string]string{"cpuset.cpus": first, "cpuset.mems": strings.TrimSpace(string(mems))} {
		if err := os.WriteFile(filepath.Join(parent, f), []byte(v), 0); err != nil {
			t.Fatal(err)
		}
	}
	no := false
	s, err := New(Config{StateRoot: t.TempDir(), CgroupParent: "/" + name, NoPivotRoot: &no})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Destroy(context.Background()); err != nil {
			t.Errorf("destroy: %v", err)
		}
	})
	free := startSleeper(t, s, "free", testSpec("/bin/sleep", "1000"), false)
	pinnedSpec := testSpec("/bin/sleep", "1000")
	if pinnedSpec.Linux.Resources == nil {
		pinnedSpec.Linux.Resources = &specs.LinuxResources{}
	}
	pinnedSpec.Linux.Resources.CPU = &specs.LinuxCPU{Cpus: first}
	pinned := startSleeper(t, s, "pinned", pinnedSpec, false)

	allowed := func(c *Container) string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.InitProcess().Pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Cpus_allowed_list:"); ok {
				return strings.TrimSpace(v)
			}
		}
		return ""
	}
	if a := allowed(free); a != first {
		t.Fatalf("before the refresh the container may run on %q, want %q (its parent's)", a, first)
	}
	if err := s.RefreshCPUSets(); err != nil {
		t.Fatal(err)
	}
	if a := allowed(free); a != online {
		t.Errorf("after the refresh the container without cpus may run on %q, want %q", a, online)
	}
	if a := allowed(pinned); a != first {
		t.Errorf("after the refresh the container with cpus %q may run on %q", first, a)
	}
	if b, _ := os.ReadFile(filepath.Join(parent, "cpuset.cpus")); strings.TrimSpace(string(b)) != online {
		t.Errorf("parent cpuset.cpus %q, want %q", b, online)
	}
}
