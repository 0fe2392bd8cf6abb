package cpuset

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/cgroups"

	"github.com/keelvm/keel/agent/hotplug"
)

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func write(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0); err != nil {
		t.Fatalf("write %q to %s: %v", s, p, err)
	}
}

// v1Root returns the host's cgroup v1 cpuset hierarchy, its online CPUs,
// or skips saying why the test cannot run here.
func v1Root(t *testing.T) (root, online string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cpuset cgroups")
	}
	if cgroups.IsCgroup2UnifiedMode() {
		t.Skip("the host runs cgroup v2 only: no v1 cpuset hierarchy (v2 needs no refresh)")
	}
	root, err := cgroups.FindCgroupMountpoint("", "cpuset")
	if err != nil {
		t.Skipf("no cgroup v1 cpuset hierarchy: %v", err)
	}
	online = read(t, "/sys/devices/system/cpu/online")
	if n, err := hotplug.CountCPUList(online); err != nil || n < 2 {
		t.Skipf("needs at least 2 online CPUs to narrow and widen a cpuset (online %q)", online)
	}
	return root, online
}

// mkCpuset creates a cpuset cgroup limited to cpus.
func mkCpuset(t *testing.T, dir, cpus, mems string) {
	t.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "cpuset.cpus"), cpus)
	write(t, filepath.Join(dir, "cpuset.mems"), mems)
}

// TestRefreshWidensV1Hierarchy plays a guest that had one CPU when its
// containers were created and has all of the host's now: on the host's
// real cgroup v1 cpuset hierarchy a parent (and a pod level below it) are
// limited to the first CPU, as are three container cgroups; a process runs
// in one. After Refresh the parents and the containers without a cpus of
// their own have every online CPU, and so has the running process; the
// container whose spec names a CPU has exactly that one.
func TestRefreshWidensV1Hierarchy(t *testing.T) {
	root, online := v1Root(t)
	first, _, _ := strings.Cut(strings.Split(online, ",")[0], "-")
	last := online[strings.LastIndexAny(online, ",-")+1:]
	mems := read(t, filepath.Join(root, "cpuset.mems"))

	parent := filepath.Join(root, fmt.Sprintf("keel-cpuset-test-%d", os.Getpid()))
	pod := filepath.Join(parent, "pod")
	a, b, c := filepath.Join(parent, "a"), filepath.Join(parent, "b"), filepath.Join(pod, "c")
	var sleeper *exec.Cmd
	t.Cleanup(func() {
		if sleeper != nil {
			sleeper.Process.Kill()
			sleeper.Wait()
		}
		for _, d := range []string{c, pod, b, a, parent} {
			os.Remove(d)
		}
	})
	for _, d := range []string{parent, a, b, pod, c} {
		mkCpuset(t, d, first, mems)
	}
	sleeper = exec.Command("sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(a, "cgroup.procs"), strconv.Itoa(sleeper.Process.Pid))
	allowed := func() string {
		for _, l := range strings.Split(read(t, fmt.Sprintf("/proc/%d/status", sleeper.Process.Pid)), "\n") {
			if v, ok := strings.CutPrefix(l, "Cpus_allowed_list:"); ok {
				return strings.TrimSpace(v)
			}
		}
		t.Fatal("no Cpus_allowed_list")
		return ""
	}
	if got := allowed(); got != first {
		t.Fatalf("process in %s may run on %q, want %q before the refresh", a, got, first)
	}

	if err := Refresh(root, online, []Target{{Path: a}, {Path: b, CPUs: last}, {Path: c}}); err != nil {
		t.Fatal(err)
	}
	for dir, want := range map[string]string{parent: online, pod: online, a: online, b: last, c: online} {
		if got := read(t, filepath.Join(dir, "cpuset.cpus")); got != want {
			t.Errorf("%s cpuset.cpus %q, want %q", dir, got, want)
		}
	}
	if got := allowed(); got != online {
		t.Errorf("process in %s may run on %q after the refresh, want %q", a, got, online)
	}

	// A target whose cpus cannot be set (no such CPU) fails naming its
	// cgroup; the others are still refreshed.
	write(t, filepath.Join(a, "cpuset.cpus"), first)
	err := Refresh(root, online, []Target{{Path: b, CPUs: "4095"}, {Path: a}})
	if err == nil || !strings.Contains(err.Error(), b) {
		t.Errorf("impossible cpus: %v", err)
	}
	if got := read(t, filepath.Join(a, "cpuset.cpus")); got != online {
		t.Errorf("%s not refreshed after another target failed: %q", a, got)
	}
}

func TestRefreshRefusesPathsOutsideRoot(t *testing.T) {
	root := t.TempDir()
	for _, p := range []string{root, filepath.Dir(root), "relative/path", filepath.Join(root, "../x")} {
		err := Refresh(root, "0-1", []Target{{Path: p}})
		if err == nil || !strings.Contains(err.Error(), "not below") {
			t.Errorf("Refresh(%q): %v", p, err)
		}
	}
	if err := Refresh(root, " ", []Target{{Path: filepath.Join(root, "x")}}); err == nil {
		t.Error("empty online list accepted")
	}
}
