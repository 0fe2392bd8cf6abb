package ociconv

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
)

// pbSpec is a Kata-like CreateContainer spec.
func pbSpec() *pb.Spec {
	return &pb.Spec{
		Version:  "1.1.0",
		Hostname: "h",
		Root:     &pb.Root{Path: "/run/kata-containers/shared/containers/c1/rootfs", Readonly: true},
		Process: &pb.Process{
			Args: []string{"/bin/sh", "-c", "true"}, Env: []string{"PATH=/bin"}, Cwd: "/",
			User:         &pb.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{10}},
			Capabilities: &pb.LinuxCapabilities{Bounding: []string{"CAP_KILL"}, Effective: []string{"CAP_KILL"}, Permitted: []string{"CAP_KILL"}},
			Rlimits:      []*pb.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			OOMScoreAdj:  100, NoNewPrivileges: true, ConsoleSize: &pb.Box{Height: 24, Width: 80},
		},
		Mounts: []*pb.Mount{{Destination: "/proc", Source: "proc", Type: "proc"}, {Destination: "/dev", Source: "tmpfs", Type: "tmpfs", Options: []string{"nosuid", "mode=755"}}},
		Hooks:  &pb.Hooks{Poststop: []*pb.Hook{{Path: "/bin/true", Timeout: 5}}},
		Linux: &pb.Linux{
			Namespaces:  []*pb.LinuxNamespace{{Type: "pid"}, {Type: "mount"}, {Type: "ipc"}, {Type: "uts"}, {Type: "network", Path: "/var/run/netns/x"}},
			CgroupsPath: "/kubepods/pod1/c1",
			Sysctl:      map[string]string{"net.ipv4.ip_forward": "1"},
			Devices:     []*pb.LinuxDevice{{Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229, FileMode: 0o666}},
			Resources: &pb.LinuxResources{
				Devices:        []*pb.LinuxDeviceCgroup{{Allow: false, Access: "rwm", Major: -1, Minor: -1}},
				Memory:         &pb.LinuxMemory{Limit: 64 << 20, Swappiness: 0},
				CPU:            &pb.LinuxCPU{Shares: 512, Quota: 50000, Period: 100000, Cpus: "0"},
				Pids:           &pb.LinuxPids{Limit: 100},
				BlockIO:        &pb.LinuxBlockIO{Weight: 500, ThrottleReadBpsDevice: []*pb.LinuxThrottleDevice{{Major: 8, Minor: 0, Rate: 1 << 20}}},
				HugepageLimits: []*pb.LinuxHugepageLimit{{Pagesize: "2MB", Limit: 0}},
				Network:        &pb.LinuxNetwork{ClassID: 7},
			},
			MaskedPaths:   []string{"/proc/kcore"},
			ReadonlyPaths: []string{"/proc/sys"},
			IntelRdt:      &pb.LinuxIntelRdt{L3CacheSchema: "L3:0=f"},
			Seccomp: &pb.LinuxSeccomp{DefaultAction: "SCMP_ACT_ALLOW", Architectures: []string{"SCMP_ARCH_X86_64"},
				Syscalls: []*pb.LinuxSyscall{{Names: []string{"mount"}, Action: "SCMP_ACT_ERRNO", ErrnoRet: &pb.LinuxSyscall_Errnoret{Errnoret: 1}}}},
		},
	}
}

func TestFromPBFields(t *testing.T) {
	s, err := FromPB(pbSpec())
	if err != nil {
		t.Fatal(err)
	}
	p := s.Process
	if p.User.UID != 1000 || p.User.AdditionalGids[0] != 10 || *p.OOMScoreAdj != 100 || !p.NoNewPrivileges || p.ConsoleSize.Width != 80 || p.Rlimits[0].Type != "RLIMIT_NOFILE" || p.Capabilities.Bounding[0] != "CAP_KILL" {
		t.Errorf("process %+v", p)
	}
	r := s.Linux.Resources
	if *r.Memory.Limit != 64<<20 || r.Memory.Swappiness != nil || *r.CPU.Shares != 512 || *r.Pids.Limit != 100 || *r.BlockIO.Weight != 500 || r.BlockIO.ThrottleReadBpsDevice[0].Rate != 1<<20 || *r.Network.ClassID != 7 {
		t.Errorf("resources %+v", r)
	}
	if r.Devices[0].Major != nil || r.Devices[0].Allow {
		t.Errorf("device wildcard %+v", r.Devices[0])
	}
	if *s.Linux.Seccomp.Syscalls[0].ErrnoRet != 1 || *s.Hooks.Poststop[0].Timeout != 5 || *s.Linux.Devices[0].FileMode != 0o666 {
		t.Errorf("seccomp/hooks/devices %+v %+v", s.Linux.Seccomp, s.Hooks)
	}
	cfg, err := ToConfig(s, Options{ID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Cgroups.Path != "/kubepods/pod1/c1" || cfg.Cgroups.Resources.Memory != 64<<20 || cfg.Cgroups.Resources.PidsLimit == nil || *cfg.Cgroups.Resources.PidsLimit != 100 {
		t.Errorf("cgroups %+v", cfg.Cgroups)
	}
	if cfg.IntelRdt != nil {
		t.Error("intel_rdt must be dropped")
	}
	if !cfg.Namespaces.Contains(configs.NEWPID) || cfg.Namespaces.PathOf(configs.NEWNET) != "/var/run/netns/x" {
		t.Errorf("namespaces %+v", cfg.Namespaces)
	}
	if cfg.Hostname != "h" || !cfg.Readonlyfs || cfg.Sysctl["net.ipv4.ip_forward"] != "1" || cfg.Seccomp == nil {
		t.Errorf("config %+v", cfg)
	}
}

func TestToConfigDefaultCgroupAndPurity(t *testing.T) {
	s := specconv.Example()
	s.Root.Path = "/rootfs"
	s.Linux.CgroupsPath = ""
	s.Linux.IntelRdt = &specs.LinuxIntelRdt{ClosID: "keep"} // cleared in the config only
	before, _ := json.Marshal(s)
	cfg, err := ToConfig(s, Options{ID: "abc", CgroupParent: "/keel", NoPivotRoot: true})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Cgroups.Path != "/keel/abc" || !cfg.NoPivotRoot {
		t.Errorf("cgroup path %q nopivot %v", cfg.Cgroups.Path, cfg.NoPivotRoot)
	}
	after, _ := json.Marshal(s)
	if string(before) != string(after) {
		t.Error("ToConfig modified its input")
	}
}

func TestInvalidSpecs(t *testing.T) {
	for _, tc := range []struct {
		name, field string
		mod         func(*specs.Spec)
	}{
		{"no root", "OCI.root.path", func(s *specs.Spec) { s.Root = nil }},
		{"relative root", "OCI.root.path", func(s *specs.Spec) { s.Root.Path = "rootfs" }},
		{"no process", "OCI.process", func(s *specs.Spec) { s.Process = nil }},
		{"no args", "OCI.process.args", func(s *specs.Spec) { s.Process.Args = nil }},
		{"relative cwd", "OCI.process.cwd", func(s *specs.Spec) { s.Process.Cwd = "tmp" }},
		{"bad env", "OCI.process.env[0]", func(s *specs.Spec) { s.Process.Env = []string{"NOEQUALS"} }},
		{"bad rlimit", "OCI.process.rlimits[0].type", func(s *specs.Spec) { s.Process.Rlimits = []specs.POSIXRlimit{{Type: "NOFILE"}} }},
		{"unknown ns", `OCI.linux.namespaces[5].type "foo"`, func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: "foo"})
		}},
		{"dup ns", "OCI.linux.namespaces[5].type", func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: "pid"})
		}},
		{"relative mount", "OCI.mounts[0].destination", func(s *specs.Spec) { s.Mounts[0].Destination = "proc" }},
		{"cgroup escape", "OCI.linux.cgroupsPath", func(s *specs.Spec) { s.Linux.CgroupsPath = "/a/../../b" }},
		{"systemd cgroup escape", "OCI.linux.cgroupsPath", func(s *specs.Spec) { s.Linux.CgroupsPath = "..:..:x" }},
		{"root cgroup", "OCI.linux.cgroupsPath", func(s *specs.Spec) { s.Linux.CgroupsPath = "/" }},
		{"root cgroup systemd", "OCI.linux.cgroupsPath", func(s *specs.Spec) { s.Linux.CgroupsPath = "::" }},
		{"bad rootfs propagation", "OCI", func(s *specs.Spec) { s.Linux.RootfsPropagation = "weird" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := specconv.Example()
			s.Root.Path = "/rootfs"
			tc.mod(s)
			_, err := ToConfig(s, Options{ID: "x"})
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("got %v, want ErrInvalid naming %q", err, tc.field)
			}
		})
	}
}

func TestResourcesKeepsDevices(t *testing.T) {
	s := specconv.Example()
	s.Root.Path = "/rootfs"
	cfg, err := ToConfig(s, Options{ID: "x"})
	if err != nil {
		t.Fatal(err)
	}
	lim := int64(1 << 20)
	res, err := Resources(cfg.Cgroups.Resources, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &lim}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Memory != 1<<20 || len(res.Devices) == 0 || len(res.Devices) != len(cfg.Cgroups.Resources.Devices) {
		t.Errorf("memory %d devices %d (was %d)", res.Memory, len(res.Devices), len(cfg.Cgroups.Resources.Devices))
	}
	if _, err := Resources(nil, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("nil resources: %v", err)
	}
}

func TestFromPBInvalid(t *testing.T) {
	for _, tc := range []struct {
		field string
		mod   func(*pb.Spec)
	}{
		{"OCI", func(s *pb.Spec) { *s = pb.Spec{} }},
		{"OCI.process.oom_score_adj", func(s *pb.Spec) { s.Process.OOMScoreAdj = 5000 }},
		{"OCI.linux.namespaces[1]", func(s *pb.Spec) { s.Linux.Namespaces[1] = nil }},
		{"OCI.linux.resources.memory.swappiness", func(s *pb.Spec) { s.Linux.Resources.Memory.Swappiness = 101 }},
		{"OCI.linux.resources.blockIO.weight", func(s *pb.Spec) { s.Linux.Resources.BlockIO.Weight = 70000 }},
		{"OCI.hooks.poststop[0].timeout", func(s *pb.Spec) { s.Hooks.Poststop[0].Timeout = -1 }},
	} {
		p := pbSpec()
		tc.mod(p)
		s, err := FromPB(p)
		if err == nil {
			_, err = ToConfig(s, Options{ID: "x"})
		}
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: got %v", tc.field, err)
		}
	}
	if _, err := FromPB(nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("nil: %v", err)
	}
}

// FuzzFromPB feeds arbitrary wire bytes through the whole CreateContainer
// conversion: it must never panic.
func FuzzFromPB(f *testing.F) {
	b, _ := proto.Marshal(pbSpec())
	f.Add(b)
	f.Add([]byte{})
	ex := pbSpec()
	ex.Linux.Namespaces = append(ex.Linux.Namespaces, &pb.LinuxNamespace{Type: "bogus"})
	b, _ = proto.Marshal(ex)
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		var p pb.Spec
		if proto.Unmarshal(data, &p) != nil {
			return
		}
		s, err := FromPB(&p)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error not classified: %v", err)
			}
			return
		}
		if _, err := ToConfig(s, Options{ID: "fuzz"}); err != nil && !errors.Is(err, ErrInvalid) {
			t.Fatalf("error not classified: %v", err)
		}
	})
}

// FuzzToConfig feeds arbitrary runtime-spec JSON to ToConfig.
func FuzzToConfig(f *testing.F) {
	s := specconv.Example()
	s.Root.Path = "/rootfs"
	b, _ := json.Marshal(s)
	f.Add(b)
	f.Add([]byte(`{"root":{"path":"/r"},"process":{"args":["x"],"cwd":"/"},"linux":{"namespaces":[{"type":"user"}],"uidMappings":[{"containerID":0,"hostID":0,"size":4294967295}]}}`))
	f.Add([]byte(`{"root":{"path":"/r"},"process":{"args":["x"],"cwd":"/"},"mounts":[{"destination":"/x","type":"bind","options":["idmap"]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var s specs.Spec
		if json.Unmarshal(data, &s) != nil {
			return
		}
		before, err := json.Marshal(&s)
		if err != nil {
			return
		}
		if _, err := ToConfig(&s, Options{ID: "fuzz"}); err != nil && !errors.Is(err, ErrInvalid) {
			t.Fatalf("error not classified: %v", err)
		}
		// ToConfig works on shallow copies: the input must stay as it was.
		if after, _ := json.Marshal(&s); !bytes.Equal(after, before) {
			t.Fatalf("ToConfig modified its input:\n%s\n->\n%s", before, after)
		}
	})
}

// The agent runs with oom_score_adj -997 as PID 1; a spec that leaves the
// field unset must still give container processes 0, not the agent's value.
func TestOOMScoreAdjAlwaysExplicit(t *testing.T) {
	s, err := FromPB(&pb.Spec{Process: &pb.Process{Args: []string{"sh"}, Cwd: "/"}, Root: &pb.Root{Path: "/r"}})
	if err != nil {
		t.Fatal(err)
	}
	if s.Process.OOMScoreAdj == nil || *s.Process.OOMScoreAdj != 0 {
		t.Fatalf("unset oom_score_adj converted to %v, want an explicit 0", s.Process.OOMScoreAdj)
	}
	p, err := ProcessFromPB(&pb.Process{Args: []string{"sh"}, Cwd: "/", OOMScoreAdj: -5}, "process")
	if err != nil || p.OOMScoreAdj == nil || *p.OOMScoreAdj != -5 {
		t.Fatalf("oom_score_adj -5 converted to %v, %v", p.OOMScoreAdj, err)
	}
}

// TestCgroupsPath: the systemd driver's form converts as Kata's agent
// converts it without systemd (':' → '/', from the hierarchy's root);
// relative and cgroupfs paths keep working; the result is what libcontainer
// gets.
func TestCgroupsPath(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"kubepods-besteffort-pod1234.slice:cri-containerd:abcd", "/kubepods-besteffort-pod1234.slice/cri-containerd/abcd"},
		{"system.slice:kata_agent:c1", "/system.slice/kata_agent/c1"},
		{"a.slice::c1", "/a.slice/c1"},
		{"/kubepods/burstable/pod1/c1", "/kubepods/burstable/pod1/c1"},
		{"kubepods/pod1/c1", "/kubepods/pod1/c1"},
		{"/a//b/", "/a/b"},
	} {
		got, err := CgroupsPath(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("CgroupsPath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
		s := specconv.Example()
		s.Root.Path = "/rootfs"
		s.Linux.CgroupsPath = tc.in
		cfg, err := ToConfig(s, Options{ID: "x"})
		if err != nil {
			t.Errorf("ToConfig with %q: %v", tc.in, err)
		} else if cfg.Cgroups.Path != tc.want || cfg.Cgroups.Systemd {
			t.Errorf("ToConfig with %q: path %q systemd %v", tc.in, cfg.Cgroups.Path, cfg.Cgroups.Systemd)
		}
	}
}
