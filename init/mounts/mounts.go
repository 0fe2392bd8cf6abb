// Package mounts plans the filesystems PID 1 mounts before anything else
// runs: /proc, /sys, /dev (devtmpfs, devpts with a private ptmx,
// /dev/shm), /run, /tmp and the cgroup hierarchy, plus the agent's own
// protected cgroup.
//
// Planning is pure: Plan, CgroupV1 and ProtectAgent turn a Config (and, for
// cgroup v1, the text of /proc/cgroups) into []step.Step that init/boot
// runs with step.Run. Tests check the plan as a mount table without
// mounting anything.
//
// Protection of the agent (documented choice):
//   - every mode: /proc/self/oom_score_adj = -997 (as Kata), so the OOM
//     killer picks container processes first. Children inherit it, so the
//     container runtime must set oom_score_adj explicitly (0 when the OCI
//     spec says nothing).
//   - cgroup v2: the agent moves into /sys/fs/cgroup/keel-agent with
//     memory.min = AgentMemoryMin (reclaim never takes its working set)
//     and the root's cgroup.subtree_control enables every available
//     controller so container cgroups can use them (the root cgroup is
//     exempt from the no-internal-processes rule, but moving the agent out
//     keeps its accounting apart from the containers').
//   - cgroup v1: there is no memory.min/low equivalent (soft_limit is a
//     cap, not a guarantee) and disabling the OOM killer for the agent's
//     memcg would freeze it at the limit instead, so the agent stays in the
//     root cgroups and relies on oom_score_adj alone.
package mounts

import (
	"os"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/keelvm/keel/init/cmdline"
	"github.com/keelvm/keel/init/step"
	"golang.org/x/sys/unix"
)

const (
	// CgroupRoot is where the cgroup hierarchy is mounted.
	CgroupRoot = "/sys/fs/cgroup"
	// AgentCgroup is the agent's own cgroup under CgroupRoot (v2).
	AgentCgroup = "keel-agent"
	// AgentMemoryMin is memory.min of AgentCgroup.
	AgentMemoryMin = 32 << 20
	// OOMScoreAdj is the agent's oom_score_adj.
	OOMScoreAdj = -997
)

const (
	nsn = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
)

// Plan returns the mount plan for PID 1: Base then CgroupRootPlan (for
// cgroup v1 only its tmpfs; CgroupV1 adds the controllers once
// /proc/cgroups can be read).
func Plan(cfg cmdline.Config) []step.Step {
	return append(Base(), CgroupRootPlan(cfg)...)
}

// Base plans the mounts that do not depend on the configuration (the
// configuration is read from /proc, which Base mounts).
func Base() []step.Step { return base(false) }

// BaseIsolated is Base with a private tmpfs on /dev holding only the basic
// character devices, instead of devtmpfs. devtmpfs is one instance per
// kernel: PID 1 of a pid namespace on a host (tests, sandboxes) must not
// change the host's /dev (Base replaces /dev/ptmx with a symlink).
func BaseIsolated() []step.Step { return base(true) }

// Proc mounts /proc; Base and BaseIsolated start with these steps, so
// PID 1 can read the command line before the other mounts.
func Proc() []step.Step {
	return []step.Step{
		step.Mkdir{Path: "/proc", Mode: 0o555},
		step.Mount{Source: "proc", Target: "/proc", FSType: "proc", Flags: nsn},
	}
}

func base(isolated bool) []step.Step {
	dev := []step.Step{
		step.Mount{Source: "devtmpfs", Target: "/dev", FSType: "devtmpfs", Flags: unix.MS_NOSUID, Data: "mode=0755"},
	}
	if isolated {
		dev = []step.Step{
			step.Mount{Source: "dev", Target: "/dev", FSType: "tmpfs", Flags: unix.MS_NOSUID, Data: "mode=0755"},
			step.Mknod{Path: "/dev/null", Mode: 0o666, Major: 1, Minor: 3},
			step.Mknod{Path: "/dev/zero", Mode: 0o666, Major: 1, Minor: 5},
			step.Mknod{Path: "/dev/full", Mode: 0o666, Major: 1, Minor: 7},
			step.Mknod{Path: "/dev/random", Mode: 0o666, Major: 1, Minor: 8},
			step.Mknod{Path: "/dev/urandom", Mode: 0o666, Major: 1, Minor: 9},
			step.Mknod{Path: "/dev/tty", Mode: 0o666, Major: 5, Minor: 0},
		}
	}
	s := append(Proc(),
		step.Mkdir{Path: "/sys", Mode: 0o555},
		step.Mount{Source: "sysfs", Target: "/sys", FSType: "sysfs", Flags: nsn},
		step.Mkdir{Path: "/dev", Mode: 0o755},
	)
	s = append(s, dev...)
	return append(s,
		step.Mkdir{Path: "/dev/pts", Mode: 0o755},
		step.Mount{Source: "devpts", Target: "/dev/pts", FSType: "devpts", Flags: unix.MS_NOSUID | unix.MS_NOEXEC,
			Data: "newinstance,ptmxmode=0666,mode=0620,gid=5"},
		step.Symlink{Target: "pts/ptmx", Link: "/dev/ptmx"},
		step.Mkdir{Path: "/dev/shm", Mode: 0o1777},
		step.Mount{Source: "shm", Target: "/dev/shm", FSType: "tmpfs", Flags: unix.MS_NOSUID | unix.MS_NODEV, Data: "mode=1777"},
		step.Symlink{Target: "/proc/self/fd", Link: "/dev/fd", Opt: true},
		step.Mkdir{Path: "/run", Mode: 0o755},
		step.Mount{Source: "tmpfs", Target: "/run", FSType: "tmpfs", Flags: unix.MS_NOSUID | unix.MS_NODEV, Data: "mode=0755"},
		step.Mkdir{Path: "/tmp", Mode: 0o1777},
		step.Mount{Source: "tmpfs", Target: "/tmp", FSType: "tmpfs", Flags: unix.MS_NOSUID | unix.MS_NODEV, Data: "mode=1777"},
	)
}

// CgroupRootPlan mounts the cgroup root: cgroup2 (nsdelegate, and
// favordynmods when asked) for v2, a tmpfs for v1. A kernel refusing the
// options (EINVAL) gets the mount with one fewer: nsdelegate alone after
// nsdelegate,favordynmods (before 6.0), none after nsdelegate.
func CgroupRootPlan(cfg cmdline.Config) []step.Step {
	s := []step.Step{step.Mkdir{Path: CgroupRoot, Mode: 0o755}}
	if cfg.Cgroup == "v1" {
		s = append(s, step.Mount{Source: "cgroup_root", Target: CgroupRoot, FSType: "tmpfs", Flags: nsn, Data: "mode=0755"})
	} else {
		data, fallback := "nsdelegate", ""
		if cfg.CgroupFavorDynmods {
			data, fallback = "nsdelegate,favordynmods", "nsdelegate"
		}
		s = append(s, step.Mount{Source: "cgroup2", Target: CgroupRoot, FSType: "cgroup2", Flags: nsn,
			Data: data, Fallback: &fallback})
	}
	return s
}

// Controller is one line of /proc/cgroups.
type Controller struct {
	Name    string
	Enabled bool
}

// ParseProcCgroups parses /proc/cgroups
// ("#subsys_name hierarchy num_cgroups enabled"); malformed lines are
// skipped.
func ParseProcCgroups(data string) []Controller {
	var out []Controller
	for _, line := range strings.Split(data, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || strings.HasPrefix(f[0], "#") {
			continue
		}
		out = append(out, Controller{Name: f[0], Enabled: f[3] == "1"})
	}
	return out
}

// v1Joins are the controllers mounted together, as systemd and Docker do.
var v1Joins = [][]string{{"cpu", "cpuacct"}, {"net_cls", "net_prio"}}

// CgroupV1 plans one cgroup (v1) mount per enabled controller under
// CgroupRoot (joining cpu,cpuacct and net_cls,net_prio, with symlinks
// for each member), from the text of /proc/cgroups.
func CgroupV1(procCgroups string) []step.Step {
	enabled := map[string]bool{}
	for _, c := range ParseProcCgroups(procCgroups) {
		if c.Enabled && validController(c.Name) {
			enabled[c.Name] = true
		}
	}
	var groups [][]string
	for _, j := range v1Joins {
		var g []string
		for _, n := range j {
			if enabled[n] {
				g = append(g, n)
				delete(enabled, n)
			}
		}
		if len(g) > 0 {
			groups = append(groups, g)
		}
	}
	var rest []string
	for n := range enabled {
		rest = append(rest, n)
	}
	sort.Strings(rest)
	for _, n := range rest {
		groups = append(groups, []string{n})
	}
	sort.Slice(groups, func(i, j int) bool { return groups[i][0] < groups[j][0] })
	var s []step.Step
	for _, g := range groups {
		name := strings.Join(g, ",")
		dir := path.Join(CgroupRoot, name)
		s = append(s,
			step.Mkdir{Path: dir, Mode: 0o555},
			step.Mount{Source: "cgroup", Target: dir, FSType: "cgroup", Flags: nsn, Data: name})
		if len(g) > 1 {
			for _, n := range g {
				s = append(s, step.Symlink{Target: name, Link: path.Join(CgroupRoot, n)})
			}
		}
	}
	return s
}

func validController(n string) bool {
	if n == "" || len(n) > 32 {
		return false
	}
	for _, r := range n {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// ProtectAgent plans the agent's self-protection (see the package doc).
func ProtectAgent(cfg cmdline.Config) []step.Step {
	s := []step.Step{
		// Optional: lowering it needs CAP_SYS_RESOURCE, which a guest's
		// PID 1 has but a namespaced test run may not.
		step.Write{Path: "/proc/self/oom_score_adj", Data: strconv.Itoa(OOMScoreAdj), Opt: true},
	}
	if cfg.Cgroup == "v1" {
		return s
	}
	dir := path.Join(CgroupRoot, AgentCgroup)
	return append(s,
		// Controllers first, while the root has no child: enabling them
		// then creates no child state and moves no task, and the move
		// below migrates the agent's threads once, straight into every
		// controller. Enabled after the move they made the kernel migrate
		// every thread a second time: more first-run kernel code before
		// the agent serves, which TCG translates.
		EnableControllers{Dir: CgroupRoot},
		step.Mkdir{Path: dir, Mode: 0o755, Opt: true},
		// "0" moves the writing process (the whole thread group).
		step.Write{Path: path.Join(dir, "cgroup.procs"), Data: "0", Opt: true},
		step.Write{Path: path.Join(dir, "memory.min"), Data: strconv.Itoa(AgentMemoryMin), Opt: true},
	)
}

// EnableControllers is
// `sed 's/^/+/;s/ / +/g' DIR/cgroup.controllers > DIR/cgroup.subtree_control`:
// every controller available in DIR is enabled for its children. It is
// optional: on a host whose controllers are bound to v1 there are none.
type EnableControllers struct{ Dir string }

func (e EnableControllers) String() string {
	return "echo +$(cat " + e.Dir + "/cgroup.controllers) > " + e.Dir + "/cgroup.subtree_control"
}
func (e EnableControllers) Optional() bool { return true }
func (e EnableControllers) Run() error {
	b, err := os.ReadFile(path.Join(e.Dir, "cgroup.controllers"))
	if err != nil {
		return err
	}
	var want []string
	for _, c := range strings.Fields(string(b)) {
		want = append(want, "+"+c)
	}
	if len(want) == 0 {
		return nil
	}
	return step.Write{Path: path.Join(e.Dir, "cgroup.subtree_control"), Data: strings.Join(want, " ")}.Run()
}
