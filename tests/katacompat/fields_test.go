package katacompat

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/container/containertest"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// fieldCase sets one group of runtime-spec fields and reads them back from
// inside the container; want must appear in the output (so a field both
// runtimes ignored would still fail).
type fieldCase struct {
	name  string
	set   func(*specs.Spec)
	probe string
	want  []string
}

// Cases run only in the VM (cgroup v2 probes), and the VM's subset: what
// depends on the guest (cgroup v2, its kernel's devices, mounts and
// seccomp, the initramfs root without pivot_root) rather than on
// libcontainer alone, which host mode covers against runc. Each container
// costs seconds under TCG.
var (
	guestOnlyCases = map[string]bool{"cgroup v2 resources": true}
	guestCases     = map[string]bool{"cgroup v2 resources": true, "devices with mode, uid and gid": true,
		"mounts with options and propagation": true, "rootfs readonly and propagation": true, "seccomp": true,
		"capabilities in five sets": true, "rlimits": true}
)

func u32(v uint32) *uint32 { return &v }
func i64(v int64) *int64   { return &v }
func u64(v uint64) *uint64 { return &v }

// mountsOf prints mountinfo's mount point, mount options, optional fields
// (propagation, peer group numbers dropped: they differ between runs) and
// super options for the given mount points.
func mountsOf(points ...string) string {
	var sel []string
	for _, p := range points {
		sel = append(sel, fmt.Sprintf("$5==%q", p))
	}
	return `awk '` + strings.Join(sel, "||") + ` {opt=""; i=7; while ($i != "-") {opt=opt" "$i; i++}; print $5, $6, opt, $(i+3)}' /proc/self/mountinfo | sed -E 's/:[0-9]+//g'`
}

// fieldCases cover fields of the runtime-spec that libcontainer supports
// and Kata's wire (oci.proto) carries. Carried but not compared here:
// uid/gid mappings, blockIO, hugepage limits, network classid/priorities,
// intelRdt (dropped, as Kata does). Not carried by the wire,
// so not expressible by a Kata host: process.user.umask, scheduler,
// ioPriority, personality, timeOffsets, domainname, execCPUAffinity.
func fieldCases() []fieldCase {
	return []fieldCase{
		{"user and additional gids", func(s *specs.Spec) {
			s.Process.User = specs.User{UID: 1000, GID: 1001, AdditionalGids: []uint32{20, 1002}}
		}, "id -u; id -g; id -G", []string{"1000\n1001\n1001 20 1002\n"}},
		{"env and cwd", func(s *specs.Spec) {
			s.Process.Env = append(s.Process.Env, "KEEL_FIELD=x y=z")
			s.Process.Cwd = "/tmp"
		}, `echo "$KEEL_FIELD"; pwd`, []string{"x y=z\n/tmp\n"}},
		{"rlimits", func(s *specs.Spec) {
			s.Process.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 321, Hard: 654}, {Type: "RLIMIT_NPROC", Soft: 99, Hard: 199},
				{Type: "RLIMIT_CORE", Soft: 4096, Hard: 8192}, {Type: "RLIMIT_MSGQUEUE", Soft: 1000, Hard: 2000}}
		}, "grep -E 'open files|processes|core|message' /proc/self/limits | tr -s ' '", []string{"Max open files 321 654 files", "Max processes 99 199"}},
		{"capabilities in five sets", func(s *specs.Spec) {
			c := []string{"CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW"}
			s.Process.Capabilities = &specs.LinuxCapabilities{Bounding: append(c, "CAP_SYS_ADMIN"), Effective: c, Permitted: c,
				Inheritable: []string{"CAP_KILL", "CAP_NET_RAW"}, Ambient: []string{"CAP_NET_RAW"}}
		}, "grep ^Cap /proc/self/status", []string{"CapInh:\t0000000000002020", "CapBnd:\t0000000000202021", "CapAmb:\t0000000000002000"}},
		{"no_new_privileges", func(s *specs.Spec) { s.Process.NoNewPrivileges = true }, "grep NoNewPrivs /proc/self/status", []string{"NoNewPrivs:\t1"}},
		{"oom_score_adj", func(s *specs.Spec) { s.Process.OOMScoreAdj = intp(345) }, "cat /proc/self/oom_score_adj", []string{"345"}},
		{"hostname", func(s *specs.Spec) { s.Hostname = "fields-host" }, "hostname; cat /proc/sys/kernel/hostname", []string{"fields-host\nfields-host\n"}},
		{"sysctls", func(s *specs.Spec) {
			s.Linux.Sysctl = map[string]string{"kernel.msgmax": "4321", "net.ipv4.ip_unprivileged_port_start": "77", "kernel.shmmni": "1234"}
		}, "cat /proc/sys/kernel/msgmax /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shmmni", []string{"4321\n77\n1234\n"}},
		{"masked and readonly paths", func(s *specs.Spec) {
			s.Linux.MaskedPaths = append(s.Linux.MaskedPaths, "/etc/passwd", "/proc/scsi")
			s.Linux.ReadonlyPaths = append(s.Linux.ReadonlyPaths, "/tmp")
		}, "wc -c < /etc/passwd; touch /tmp/x 2>/dev/null; echo tmp-write=$?; " + mountsOf("/etc/passwd", "/tmp", "/proc/sys"), []string{"0\ntmp-write=1\n"}},
		{"mounts with options and propagation", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts,
				specs.Mount{Destination: "/mnt", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "noexec", "size=1m", "mode=710", "rshared"}},
				specs.Mount{Destination: "/opt", Type: "tmpfs", Source: "tmpfs", Options: []string{"ro", "nosuid", "size=2m", "mode=755", "rslave"}},
				specs.Mount{Destination: "/home", Type: "bind", Source: "/etc", Options: []string{"rbind", "ro", "rprivate"}})
		}, "stat -c '%a' /mnt; " + mountsOf("/mnt", "/opt", "/home"), []string{"710\n", "/mnt rw,nosuid,nodev,noexec", "shared", "/opt ro,nosuid"}},
		{"devices with mode, uid and gid", func(s *specs.Spec) {
			s.Linux.Devices = append(s.Linux.Devices, specs.LinuxDevice{Path: "/dev/fieldnull", Type: "c", Major: 1, Minor: 3,
				FileMode: fileMode(0o620), UID: u32(1000), GID: u32(1001)})
			s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: "c", Major: i64(1), Minor: i64(3), Access: "rwm"})
		}, "stat -c '%A %u %g %t:%T' /dev/fieldnull; (echo hi > /dev/fieldnull) 2>/dev/null; echo write=$?; cat /dev/fieldnull; echo read=$?",
			[]string{"crw--w---- 1000 1001 1:3\n"}},
		{"cgroup resources", func(s *specs.Spec) {
			s.Linux.Resources.Memory = &specs.LinuxMemory{Limit: i64(48 << 20)}
			s.Linux.Resources.CPU = &specs.LinuxCPU{Shares: u64(333), Quota: i64(30000), Period: u64(100000)}
			s.Linux.Resources.Pids = &specs.LinuxPids{Limit: i64(57)}
		}, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.shares /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/pids/pids.max",
			[]string{fmt.Sprintf("%d\n333\n30000\n57\n", 48<<20)}},
		{"cgroup v2 resources", func(s *specs.Spec) {
			s.Linux.Resources.Memory = &specs.LinuxMemory{Limit: i64(48 << 20)}
			s.Linux.Resources.CPU = &specs.LinuxCPU{Shares: u64(333), Quota: i64(30000), Period: u64(100000)}
			s.Linux.Resources.Pids = &specs.LinuxPids{Limit: i64(57)}
		}, "cat /proc/self/cgroup /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.weight /sys/fs/cgroup/cpu.max /sys/fs/cgroup/pids.max",
			// cpu.weight 42 is libcontainer's conversion of 333 shares.
			[]string{fmt.Sprintf("0::/\n%d\n42\n30000 100000\n57\n", 48<<20)}},
		{"seccomp", func(s *specs.Spec) {
			s.Linux.Seccomp = &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Architectures: []specs.Arch{specs.ArchX86_64},
				Syscalls: []specs.LinuxSyscall{{Names: []string{"mkdir", "mkdirat"}, Action: specs.ActErrno, ErrnoRet: uintp(13)}}}
		}, "grep ^Seccomp: /proc/self/status; mkdir /tmp/d 2>&1; echo rc=$?", []string{"Seccomp:\t2", "Permission denied", "rc=1"}},
		{"rootfs readonly and propagation", func(s *specs.Spec) {
			s.Root.Readonly = true
			s.Linux.RootfsPropagation = "slave"
		}, "touch /x 2>/dev/null; echo root-write=$?; " + mountsOf("/"), []string{"root-write=1\n", "/ ro"}},
	}
}

func intp(v int) *int { return &v }

func uintp(v uint) *uint { return &v }

func fileMode(m os.FileMode) *os.FileMode { return &m }

// baseSpec is runc's example spec on rootfs, with the cgroup hierarchy and
// a /tmp tmpfs mounted, running probe under sh.
func baseSpec(rootfs, probe string) *specs.Spec {
	s := specconv.Example()
	s.Root.Path, s.Root.Readonly = rootfs, false
	s.Process.Terminal = false
	s.Process.Args = []string{"/bin/sh", "-c", probe}
	s.Process.Env = []string{"PATH=/bin:/sbin:/usr/bin"}
	s.Hostname = "fields"
	s.Mounts = append(s.Mounts,
		specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
		specs.Mount{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "size=1m", "mode=755"}})
	// No cgroup namespace: the v1 hierarchies are then bind-mounted at the
	// container's own cgroup by both runtimes.
	var nss []specs.LinuxNamespace
	for _, n := range s.Linux.Namespaces {
		if n.Type != specs.CgroupNamespace {
			nss = append(nss, n)
		}
	}
	s.Linux.Namespaces = nss
	return s
}

// toPB converts a runtime-spec spec to Kata's wire form the way Kata's
// runtime does (grpc.OCItoGRPC marshals to JSON and back; Go's JSON field
// matching is case-insensitive, which maps the runtime-spec names onto
// oci.proto's); seccomp's errnoRet, a oneof on the wire, is set by hand.
func toPB(t *testing.T, s *specs.Spec) *pb.Spec {
	t.Helper()
	cp := *s
	var errnos []*uint
	if s.Linux.Seccomp != nil {
		sc := *s.Linux.Seccomp
		sc.Syscalls = append([]specs.LinuxSyscall(nil), sc.Syscalls...)
		for i := range sc.Syscalls {
			errnos = append(errnos, sc.Syscalls[i].ErrnoRet)
			sc.Syscalls[i].ErrnoRet = nil
		}
		l := *s.Linux
		l.Seccomp = &sc
		cp.Linux = &l
	}
	b, err := json.Marshal(&cp)
	if err != nil {
		t.Fatal(err)
	}
	var out pb.Spec
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("spec to wire form: %v", err)
	}
	out.Version = s.Version
	for i, e := range errnos {
		if e != nil {
			out.Linux.Seccomp.Syscalls[i].ErrnoRet = &pb.LinuxSyscall_Errnoret{Errnoret: uint32(*e)}
		}
	}
	return &out
}

// runRunc runs the spec with Debian's runc and returns its stdout.
func runRunc(t *testing.T, s *specs.Spec, id string) string {
	t.Helper()
	bundle, root := t.TempDir(), t.TempDir()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "runc", "--root", root, "run", "--bundle", bundle, id)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	exec.Command("runc", "--root", root, "delete", "-f", id).Run()
	if err != nil {
		t.Fatalf("runc run: %v\nstdout %q\nstderr %s", err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// runKeel runs the spec through keel-agent (CreateContainer, Start, read
// stdout, Wait, Remove) and returns its stdout.
func runKeel(t *testing.T, a pb.AgentServiceService, s *pb.Spec, id string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: id, ExecId: id, OCI: s}); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	defer a.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: id, Timeout: 10})
	if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	out := readUntil(ctx, t, a, id, "")
	if _, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: id}); err != nil {
		t.Fatalf("WaitProcess: %v", err)
	}
	return out
}

// TestSpecFieldsMatchRunc creates one container per field group with
// keel-agent (host mode, over ttrpc, the spec in Kata's wire form) and
// with `runc run`, reads the fields back from inside and compares.
func TestSpecFieldsMatchRunc(t *testing.T) {
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc is not installed (scripts/apt-packages.txt has it)")
	}
	if _, err := os.Stat("/sys/fs/cgroup/memory"); err != nil {
		t.Skip("the cgroup probes read cgroup v1 hierarchies; this host has none")
	}
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	if err := containertest.MakeRootfs(rootfs); err != nil {
		t.Fatal(err)
	}
	_, c := startAgent(t, filepath.Join(dir, "state"))
	for i, tc := range fieldCases() {
		if guestOnlyCases[tc.name] {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			spec := baseSpec(rootfs, tc.probe)
			tc.set(spec)
			runcID := fmt.Sprintf("fields-runc-%d-%d", os.Getpid(), i)
			keelID := fmt.Sprintf("fields-keel-%d-%d", os.Getpid(), i)
			rs := *spec
			rl := *spec.Linux
			rs.Linux = &rl
			rl.CgroupsPath = "/keel-fields-runc/" + runcID
			defer containertest.KillCgroup("keel-fields-runc", runcID)
			want := runRunc(t, &rs, runcID)
			ks := *spec
			kl := *spec.Linux
			ks.Linux = &kl
			kl.CgroupsPath = "/keel-fields/" + keelID
			defer containertest.KillCgroup("keel-fields", keelID)
			got := runKeel(t, c.Agent, toPB(t, &ks), keelID)
			if got != want {
				t.Errorf("keel-agent reads back\n%s\nrunc reads back\n%s", got, want)
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("keel-agent output lacks %q:\n%s", w, got)
				}
			}
		})
	}
}

// testFieldsInGuest runs the guest's field cases (no runc there: each is
// checked against its expected reading only).
func testFieldsInGuest(t *testing.T, a pb.AgentServiceService, rootfs string) {
	for i, tc := range fieldCases() {
		if !guestCases[tc.name] {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			spec := baseSpec(rootfs, tc.probe)
			tc.set(spec)
			id := fmt.Sprintf("fields-vm-%d", i)
			spec.Linux.CgroupsPath = "/keel-fields/" + id
			got := runKeel(t, a, toPB(t, spec), id)
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("output lacks %q:\n%s", w, got)
				}
			}
		})
	}
}
