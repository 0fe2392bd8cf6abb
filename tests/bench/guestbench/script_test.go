package guestbench

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/keelvm/keel/agent/container/containertest"
)

// TestBenchScriptOnHost runs what the VM benchmarks run inside the guest,
// on this host, cheaply: the embedded bench.sh with the bundle templates
// WriteBenchDir makes, with Debian's runc and crun (2 iterations of run and
// exec each), and parses the result line as the benchmarks do. It catches a
// broken script, template or parser without building or booting the
// Debian guest.
func TestBenchScriptOnHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: runc and crun create namespaces and cgroups")
	}
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	if err := containertest.MakeRootfs(rootfs); err != nil {
		t.Fatal(err)
	}
	bench := filepath.Join(dir, "bench")
	if err := WriteBenchDir(bench, rootfs); err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	t.Cleanup(func() { removeCgroupParent(t) })
	for _, rt := range []string{"runc", "crun"} {
		if _, err := exec.LookPath(rt); err != nil {
			t.Fatalf("%s is not installed (scripts/apt-packages.txt lists it): %v", rt, err)
		}
		for _, op := range []string{"run", "exec"} {
			args := []string{filepath.Join(bench, "bench.sh"), bench, rt, op, "2"}
			if rt == "crun" && hybridCgroups() {
				// crun refuses a cgroup v1 host whose cgroup2 mount has
				// controllers ("hybrid mode"); the guest is pure cgroup v2.
				// Here it runs in a mount namespace without that mount.
				args = append([]string{"unshare", "--mount", "--propagation", "private", "sh", "-c",
					`umount /sys/fs/cgroup/unified && exec "$@"`, "sh"}, args...)
			}
			cmd := exec.Command(args[0], args[1:]...)
			cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("bench.sh %s %s: %v\n%s", rt, op, err, out)
			}
			r, err := ParseResult(string(out))
			if err != nil {
				t.Fatal(err)
			}
			if r.Runtime != rt || r.Op != op || r.N != 2 {
				t.Errorf("bench.sh %s %s 2 answered %+v", rt, op, r)
			}
			t.Logf("%s %s: %.1f ms/op", rt, op, float64(r.NsPerOp)/1e6)
		}
	}
	// Its work directory (state, bundles) is gone, the exec container
	// deleted with it.
	if left, _ := filepath.Glob(filepath.Join(tmp, "*")); len(left) > 0 {
		t.Errorf("bench.sh left %v", left)
	}
	// A failing container fails the script, with the runtime's words.
	os.WriteFile(filepath.Join(bench, "true.json"), []byte(strings.Replace(mustRead(t, filepath.Join(bench, "true.json")), rootfs, filepath.Join(dir, "missing"), 1)), 0o644)
	cmd := exec.Command(filepath.Join(bench, "bench.sh"), bench, "runc", "run", "1")
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "bench.sh: runc run 1") {
		t.Errorf("bench.sh with a missing rootfs: %v\n%s", err, out)
	}
}

// hybridCgroups reports a cgroup v1 host (cgroup2 is then at most the
// "unified" mount beside the v1 hierarchies).
func hybridCgroups() bool {
	var st unix.Statfs_t
	return unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type != unix.CGROUP2_SUPER_MAGIC
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// removeCgroupParent removes the (empty) keel-guestbench cgroups the
// runtimes' containers were created under, in every hierarchy; a container
// cgroup left inside one is an error.
func removeCgroupParent(t *testing.T) {
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*/keel-guestbench")
	dirs = append(dirs, "/sys/fs/cgroup/keel-guestbench")
	for _, d := range dirs {
		if left, _ := filepath.Glob(filepath.Join(d, "*-*")); len(left) > 0 {
			for _, l := range left {
				if fi, err := os.Stat(l); err == nil && fi.IsDir() {
					t.Errorf("container cgroup left behind: %s", l)
					os.Remove(l)
				}
			}
		}
		os.Remove(d)
	}
}

func TestParseResult(t *testing.T) {
	// A debug-console transcript: prompt, the echoed command, the line.
	out := "\x1b[?2004hroot@guest:/# exec /bench/bench.sh /bench runc run 3 2>&1\n\x1b[?2004lkeel-guestbench runc run 3 41000000\n"
	r, err := ParseResult(out)
	if err != nil || r != (Result{Runtime: "runc", Op: "run", N: 3, NsPerOp: 41000000}) {
		t.Fatalf("ParseResult = %+v, %v", r, err)
	}
	for _, bad := range []string{"", "bench.sh: runc run 1:\nno such file\n", "keel-guestbench runc run 3 -5\n", "keel-guestbench runc run x 5\n"} {
		if r, err := ParseResult(bad); err == nil {
			t.Errorf("ParseResult(%q) = %+v, want an error", bad, r)
		}
	}
}
