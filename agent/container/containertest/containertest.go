// Package containertest builds what host-mode container tests need: a
// busybox-static rootfs, specs for it, and leftover checks (mounts, cgroups,
// child processes, fds). Tests that create containers in-process must also
// dispatch libcontainer's init re-exec in their test binary (see
// agent/container's main_test.go).
package containertest

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/rootfs-builder/recipe"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// BusyboxPath is Debian's busybox-static.
const BusyboxPath = "/bin/busybox"

// MakeRootfs builds a busybox-static container rootfs in dir: busybox with
// every applet linked (rootfs-builder's recipe.InstallBusybox, the same code
// that puts busybox into guest images), the mount points an OCI spec needs
// (they must exist when the tree ends up on a read-only image) and
// passwd/group/hostname/resolv.conf.
func MakeRootfs(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if _, err := os.Stat(BusyboxPath); err != nil {
		return fmt.Errorf("busybox-static is needed: %w", err)
	}
	if _, err := recipe.InstallBusybox(context.Background(), dir, BusyboxPath); err != nil {
		return err
	}
	for _, d := range []string{"proc", "sys", "dev", "etc", "tmp", "root", "run"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	for name, content := range map[string]string{"etc/hostname": "rootfs\n", "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group": "root:x:0:\n", "etc/resolv.conf": ""} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Spec is runc's example spec on rootfs (read-only, tmpfs /tmp), running
// args without a terminal.
func Spec(rootfs string, args ...string) *specs.Spec {
	s := specconv.Example()
	s.Root.Path = rootfs
	s.Root.Readonly = true
	s.Process.Terminal = false
	s.Process.Args = args
	s.Hostname = "keeltest"
	s.Mounts = append(s.Mounts, specs.Mount{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "size=1m"}})
	return s
}

// Snapshot is what a test must leave as it found it.
type Snapshot struct {
	Mounts int
	FDs    int
	// FDLinks maps each open fd to what it names (for Diff's report).
	FDLinks  map[string]string
	Children []string
	Cgroups  []string
}

// Take records the current mounts, fds, child processes and the cgroup
// dirs under /sys/fs/cgroup/*/<cgroupParent> (or the unified tree).
func Take(cgroupParent string) Snapshot {
	var s Snapshot
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		s.Mounts = bytes.Count(b, []byte("\n"))
	}
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		s.FDs = len(ents)
		s.FDLinks = map[string]string{}
		for _, e := range ents {
			l, _ := os.Readlink("/proc/self/fd/" + e.Name())
			if l == "anon_inode:[pidfd]" {
				// Name the process a pidfd refers to, so a leak report
				// says whose it is.
				l += pidfdOwner(e.Name())
			}
			s.FDLinks[e.Name()] = l
		}
	}
	s.Children = Children()
	for _, root := range []string{"/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		ents, err := os.ReadDir(filepath.Join(root, cgroupParent))
		if err != nil {
			continue
		}
		for _, e := range ents {
			if e.IsDir() {
				s.Cgroups = append(s.Cgroups, filepath.Join(root, cgroupParent, e.Name()))
			}
		}
	}
	return s
}

// pidfdOwner is " pid N (comm)" for the pidfd fd, read from its fdinfo.
func pidfdOwner(fd string) string {
	b, err := os.ReadFile("/proc/self/fdinfo/" + fd)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if pid, ok := strings.CutPrefix(line, "Pid:"); ok {
			pid = strings.TrimSpace(pid)
			comm, _ := os.ReadFile("/proc/" + pid + "/comm")
			return fmt.Sprintf(" pid %s (%s)", pid, strings.TrimSpace(string(comm)))
		}
	}
	return ""
}

// Diff describes what now holds more than s ("" when nothing).
func (s Snapshot) Diff(now Snapshot) string {
	var d []string
	if now.Mounts > s.Mounts {
		d = append(d, fmt.Sprintf("mounts %d -> %d", s.Mounts, now.Mounts))
	}
	if now.FDs > s.FDs {
		var added []string
		for fd, l := range now.FDLinks {
			if s.FDLinks[fd] != l {
				added = append(added, fd+"="+l)
			}
		}
		sort.Strings(added)
		d = append(d, fmt.Sprintf("fds %d -> %d (new or changed: %v)", s.FDs, now.FDs, added))
	}
	if len(now.Children) > len(s.Children) {
		d = append(d, fmt.Sprintf("children %v -> %v", s.Children, now.Children))
	}
	if len(now.Cgroups) > len(s.Cgroups) {
		d = append(d, fmt.Sprintf("cgroups %v -> %v", s.Cgroups, now.Cgroups))
	}
	return strings.Join(d, "; ")
}

// Children lists this process's children as "pid:state".
func Children() []string {
	self := strconv.Itoa(os.Getpid())
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) {
			continue
		}
		f := strings.Fields(string(b[i+2:]))
		if len(f) > 1 && f[1] == self {
			out = append(out, e.Name()+":"+f[0])
		}
	}
	return out
}

// KillCgroup is a last-resort cleanup for tests: it SIGKILLs every process
// in the container cgroup <parent>/<id> and removes its directories in every
// mounted hierarchy. It returns how many processes it killed.
func KillCgroup(parent, id string) int {
	killed := map[int]bool{}
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", parent, id))
	if d := filepath.Join("/sys/fs/cgroup", parent, id); dirExists(d) {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		os.WriteFile(filepath.Join(d, "freezer.state"), []byte("THAWED"), 0o644)
		b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && !killed[pid] && syscallKill(pid) == nil {
				killed[pid] = true
			}
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, d := range dirs {
		for os.Remove(d) != nil && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	return len(killed)
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

func syscallKill(pid int) error { return unix.Kill(pid, unix.SIGKILL) }

// RunWithoutRoot is what a TestMain that needs root runs instead of exiting
// 0 in silence when it is not root: only the package's TestNeedsRoot (which
// calls SkipUnlessRoot), so the skip and its reason are reported by go test
// (-v, -json, make test's list of skips) rather than hidden.
func RunWithoutRoot(m *testing.M) int {
	if !flag.Parsed() {
		flag.Parse()
	}
	flag.Set("test.run", "^TestNeedsRoot$")
	flag.Set("test.bench", "^$")
	return m.Run()
}

// SkipUnlessRoot skips t, naming what needs root, when not running as root.
func SkipUnlessRoot(t testing.TB, what string) {
	t.Helper()
	if uid := os.Geteuid(); uid != 0 {
		t.Skipf("%s need root (running as uid %d): every test of this package is skipped", what, uid)
	}
}

// HostEnv is what a package that drives the real keel-agent binary in host
// mode needs: the binary and a busybox rootfs in a temporary directory.
type HostEnv struct{ Dir, AgentBin, Rootfs string }

// HostModeMain is TestMain for such packages. Without root it runs only
// TestNeedsRoot, which the package must define (RunWithoutRoot), so the skip
// is reported. Otherwise it takes the agent from AgentBinary, makes the rootfs,
// calls setup and runs the tests; the directory is removed afterwards.
func HostModeMain(m *testing.M, setup func(*HostEnv) error) int {
	if os.Geteuid() != 0 {
		return RunWithoutRoot(m)
	}
	dir, err := os.MkdirTemp("", "keel-hostmode-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	env := &HostEnv{Dir: dir, Rootfs: filepath.Join(dir, "rootfs")}
	if env.AgentBin, err = AgentBinary(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := MakeRootfs(env.Rootfs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if setup != nil {
		if err := setup(env); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return m.Run()
}

// NoGC turns the garbage collector off until t ends. Leak checks count fds
// with it off: Go closes the pidfd of an os.Process whose wait failed, or a
// dropped *os.File, only in a GC cleanup, so a collection that happens to
// run mid-test would hide the leak (and forcing one would hide it always).
func NoGC(t testing.TB) {
	old := debug.SetGCPercent(-1)
	t.Cleanup(func() { debug.SetGCPercent(old) })
}
