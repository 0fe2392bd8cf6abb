package mounts

import (
	"reflect"
	"strings"
	"testing"

	"github.com/keelvm/keel/init/cmdline"
	"github.com/keelvm/keel/init/step"
)

// table renders the mounts of a plan as "target fstype options" lines.
func table(steps []step.Step) []string {
	var out []string
	for _, s := range steps {
		if m, ok := s.(step.Mount); ok {
			out = append(out, m.Target+" "+m.FSType+" "+step.Options(m.Flags, m.Data))
		}
	}
	return out
}

func TestPlanV2(t *testing.T) {
	cfg, _ := cmdline.Parse("")
	got := table(Plan(cfg))
	want := []string{
		"/proc proc nosuid,nodev,noexec",
		"/sys sysfs nosuid,nodev,noexec",
		"/dev devtmpfs nosuid,mode=0755",
		"/dev/pts devpts nosuid,noexec,newinstance,ptmxmode=0666,mode=0620,gid=5",
		"/dev/shm tmpfs nosuid,nodev,mode=1777",
		"/run tmpfs nosuid,nodev,mode=0755",
		"/tmp tmpfs nosuid,nodev,mode=1777",
		"/sys/fs/cgroup cgroup2 nosuid,nodev,noexec,nsdelegate",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("mount table\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// every mount target is created first, and parents come before children
	made := map[string]bool{"/": true}
	for _, s := range Plan(cfg) {
		switch s := s.(type) {
		case step.Mkdir:
			made[s.Path] = true
		case step.Mount:
			if !made[s.Target] {
				t.Errorf("%s mounted before mkdir", s.Target)
			}
		}
	}
	var lines []string
	for _, s := range Plan(cfg) {
		lines = append(lines, s.String())
	}
	if !strings.Contains(strings.Join(lines, "\n"), "ln -sfn pts/ptmx /dev/ptmx") {
		t.Errorf("no ptmx symlink:\n%s", strings.Join(lines, "\n"))
	}
}

// TestCgroup2FavorDynmods: agent.cgroup_favordynmods adds the option, and
// a kernel without it (EINVAL) still gets nsdelegate.
func TestCgroup2FavorDynmods(t *testing.T) {
	for _, tc := range []struct {
		in, data, fallback string
	}{
		{"agent.cgroup_favordynmods=1", "nsdelegate,favordynmods", "nsdelegate"},
		{"agent.cgroup_favordynmods=0", "nsdelegate", ""},
	} {
		cfg, w := cmdline.Parse(tc.in)
		if len(w) != 0 {
			t.Fatal(w)
		}
		var m *step.Mount
		for _, s := range CgroupRootPlan(cfg) {
			if s, ok := s.(step.Mount); ok {
				m = &s
			}
		}
		if m == nil || m.FSType != "cgroup2" || m.Data != tc.data || m.Fallback == nil || *m.Fallback != tc.fallback {
			t.Errorf("%s: cgroup2 mount %+v, want data %q fallback %q", tc.in, m, tc.data, tc.fallback)
		}
	}
}

func TestPlanV1(t *testing.T) {
	cfg, _ := cmdline.Parse("systemd.unified_cgroup_hierarchy=0")
	got := table(Plan(cfg))
	if last := got[len(got)-1]; last != "/sys/fs/cgroup tmpfs nosuid,nodev,noexec,mode=0755" {
		t.Errorf("v1 cgroup root = %q", last)
	}
	proc := `#subsys_name	hierarchy	num_cgroups	enabled
cpuset	2	1	1
cpu	3	1	1
cpuacct	3	1	1
blkio	4	1	1
memory	5	1	1
devices	6	1	1
freezer	7	1	1
net_cls	8	1	1
perf_event	9	1	1
net_prio	8	1	1
hugetlb	10	1	1
pids	11	1	1
rdma	12	1	0
misc	13	1	1
garbage line
../evil	1	1	1
`
	got = table(CgroupV1(proc))
	want := []string{
		"/sys/fs/cgroup/blkio cgroup nosuid,nodev,noexec,blkio",
		"/sys/fs/cgroup/cpu,cpuacct cgroup nosuid,nodev,noexec,cpu,cpuacct",
		"/sys/fs/cgroup/cpuset cgroup nosuid,nodev,noexec,cpuset",
		"/sys/fs/cgroup/devices cgroup nosuid,nodev,noexec,devices",
		"/sys/fs/cgroup/freezer cgroup nosuid,nodev,noexec,freezer",
		"/sys/fs/cgroup/hugetlb cgroup nosuid,nodev,noexec,hugetlb",
		"/sys/fs/cgroup/memory cgroup nosuid,nodev,noexec,memory",
		"/sys/fs/cgroup/misc cgroup nosuid,nodev,noexec,misc",
		"/sys/fs/cgroup/net_cls,net_prio cgroup nosuid,nodev,noexec,net_cls,net_prio",
		"/sys/fs/cgroup/perf_event cgroup nosuid,nodev,noexec,perf_event",
		"/sys/fs/cgroup/pids cgroup nosuid,nodev,noexec,pids",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("v1 table\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var links []string
	for _, s := range CgroupV1(proc) {
		if l, ok := s.(step.Symlink); ok {
			links = append(links, l.Link+"->"+l.Target)
		}
	}
	if len(links) != 4 || links[0] != "/sys/fs/cgroup/cpu->cpu,cpuacct" {
		t.Errorf("links %v", links)
	}
	if len(CgroupV1("")) != 0 {
		t.Error("empty /proc/cgroups should plan nothing")
	}
}

func TestProtectAgent(t *testing.T) {
	v2, _ := cmdline.Parse("")
	var lines []string
	for _, s := range ProtectAgent(v2) {
		lines = append(lines, s.String())
	}
	joined := strings.Join(lines, "\n")
	for _, w := range []string{`echo "-997" > /proc/self/oom_score_adj`, `echo "0" > /sys/fs/cgroup/keel-agent/cgroup.procs`,
		"cgroup.subtree_control", `echo "33554432" > /sys/fs/cgroup/keel-agent/memory.min`} {
		if !strings.Contains(joined, w) {
			t.Errorf("missing %q in\n%s", w, joined)
		}
	}
	// Controllers are enabled while the root has no child yet, before
	// the agent's cgroup is made and the agent moved into it: enabled
	// after the move, they make the kernel migrate every agent thread a
	// second time (mounts.go says why that matters).
	enable, mkdir, move := -1, -1, -1
	for i, l := range lines {
		switch {
		case strings.Contains(l, "cgroup.subtree_control"):
			enable = i
		case strings.HasPrefix(l, "mkdir") && strings.Contains(l, AgentCgroup):
			mkdir = i
		case strings.Contains(l, AgentCgroup+"/cgroup.procs"):
			move = i
		}
	}
	if enable < 0 || mkdir < 0 || move < 0 || !(enable < mkdir && mkdir < move) {
		t.Errorf("want enable controllers < mkdir < move, got steps %d, %d, %d in\n%s", enable, mkdir, move, joined)
	}
	v1, _ := cmdline.Parse("agent.cgroup=v1")
	if n := len(ProtectAgent(v1)); n != 1 {
		t.Errorf("v1 protect plan has %d steps", n)
	}
}

func FuzzCgroupV1(f *testing.F) {
	f.Add("#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t3\t1\t1\ncpuacct\t3\t1\t1\nmemory\t5\t1\t0\n")
	f.Add("a b c 1\n../x 1 1 1\n")
	f.Fuzz(func(t *testing.T, s string) {
		for _, st := range CgroupV1(s) {
			var p string
			switch st := st.(type) {
			case step.Mount:
				p = st.Target
			case step.Mkdir:
				p = st.Path
			case step.Symlink:
				p = st.Link
			}
			if !strings.HasPrefix(p, CgroupRoot+"/") || strings.Contains(p, "..") || strings.Count(p, "/") != 4 {
				t.Fatalf("step escapes %s: %s", CgroupRoot, st)
			}
		}
	})
}
