package container

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/keelvm/keel/agent/podns"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// kataSpec is testSpec as Kata's runtime shapes it: no pid namespace
// (handlePidNamespace strips it), no network or cgroup namespace
// (constrainGRPCSpec), no namespace paths.
func kataSpec(args ...string) *specs.Spec {
	s := testSpec(args...)
	s.Linux.Namespaces = slices.DeleteFunc(s.Linux.Namespaces, func(n specs.LinuxNamespace) bool {
		return n.Type == specs.PIDNamespace || n.Type == specs.NetworkNamespace || n.Type == specs.CgroupNamespace
	})
	return s
}

func ownNS(t *testing.T, kind string) string {
	t.Helper()
	l, err := os.Readlink("/proc/self/ns/" + kind)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// nsOf reads a running container's namespaces through its init.
func nsOf(t *testing.T, c *Container, kind string) string {
	t.Helper()
	l, err := os.Readlink(filepath.Join("/proc", itoa(c.InitProcess().Pid), "ns", kind))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func itoa(i int) string { return strconv.Itoa(i) }

// podnsIs reports whether path is a namespace file of any of the pinned
// kinds (error otherwise).
func podnsIs(_ string, path string) (bool, error) {
	for _, k := range []string{"ipc", "uts", "pid"} {
		if a, err := podns.Is(k, path); err == nil {
			return a, nil
		}
	}
	return false, errors.New("not a pinned namespace")
}

func startSleeper(t *testing.T, s *Sandbox, id string, spec *specs.Spec, sandboxPidns bool) *Container {
	t.Helper()
	c, err := s.CreateContainer(ContainerConfig{ID: uniqueID(id), Spec: spec, SandboxPidns: sandboxPidns, IO: newIO(t, false)})
	if err != nil {
		t.Fatalf("create %s: %v", id, err)
	}
	if err := c.Start(); err != nil {
		t.Fatalf("start %s: %v", id, err)
	}
	return c
}

// TestPodNamespaces: CreateSandbox's IPC and UTS namespaces (with its
// hostname) are joined by every container, whatever its spec says; each
// container gets a new pid namespace unless sandbox_pidns, which joins the
// first container's; none is ever in the agent's namespaces; Destroy
// unpins them.
func TestPodNamespaces(t *testing.T) {
	s := newSandbox(t)
	if err := s.Create(SandboxConfig{ID: "pod", Hostname: "podhost"}); err != nil {
		t.Fatal(err)
	}
	pause := startSleeper(t, s, "pause", kataSpec("/bin/sleep", "1000"), false)
	app1 := startSleeper(t, s, "app1", kataSpec("/bin/sleep", "1000"), false)
	// A spec with its own ipc/uts/pid entries and a hostname of its own.
	full := testSpec("/bin/sleep", "1000")
	full.Hostname = "mine"
	app2 := startSleeper(t, s, "app2", full, false)
	shared := startSleeper(t, s, "shared", kataSpec("/bin/sleep", "1000"), true)

	for _, kind := range []string{"ipc", "uts"} {
		want := nsOf(t, pause, kind)
		if want == ownNS(t, kind) {
			t.Errorf("%s: the pause container is in the agent's namespace %s", kind, want)
		}
		for _, c := range []*Container{app1, app2, shared} {
			if got := nsOf(t, c, kind); got != want {
				t.Errorf("%s of %s = %s, want the sandbox's %s", kind, c.ID(), got, want)
			}
		}
	}
	pids := map[string]string{}
	for _, c := range []*Container{pause, app1, app2} {
		// Hold each namespace open: the kernel reuses the inode
		// number of a freed namespace at once, so the pause
		// container's, once gone, would look like the new one below.
		f, err := os.Open(filepath.Join("/proc", itoa(c.InitProcess().Pid), "ns", "pid"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		ns := nsOf(t, c, "pid")
		if ns == ownNS(t, "pid") || pids[ns] != "" {
			t.Errorf("pid ns of %s = %s: not new (agent's %s, seen in %q)", c.ID(), ns, ownNS(t, "pid"), pids[ns])
		}
		pids[ns] = c.ID()
	}
	if got, want := nsOf(t, shared, "pid"), nsOf(t, pause, "pid"); got != want {
		t.Errorf("sandbox_pidns container's pid ns %s, want the first container's %s", got, want)
	}
	// The hostname is the sandbox's in every container, app2's own
	// hostname included (Kata's agent sets a spec hostname only in a new
	// UTS namespace).
	io := newIO(t, false)
	p, err := app2.Exec("h", &specs.Process{Args: []string{"/bin/hostname"}, Cwd: "/", Env: []string{"PATH=/bin"}}, io)
	if err != nil {
		t.Fatal(err)
	}
	if out := readAll(t, io); out != "podhost\n" {
		t.Errorf("hostname in app2 %q, want podhost", out)
	}
	waitStatus(t, p)

	// Once the first container has exited, sandbox_pidns cannot join its
	// pid namespace; once it is removed, the next one takes its place.
	if err := pause.Signal("", unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, pause.InitProcess())
	_, err = s.CreateContainer(ContainerConfig{ID: uniqueID("late"), Spec: kataSpec("/bin/true"), SandboxPidns: true, IO: newIO(t, false)})
	if !errors.Is(err, ErrState) || !strings.Contains(err.Error(), "sandbox_pidns") {
		t.Errorf("sandbox_pidns after the first container exited: %v", err)
	}
	if err := s.RemoveContainer(context.Background(), pause.ID(), 0); err != nil {
		t.Fatal(err)
	}
	next := startSleeper(t, s, "next", kataSpec("/bin/sleep", "1000"), true)
	after := startSleeper(t, s, "after", kataSpec("/bin/sleep", "1000"), true)
	if a, b := nsOf(t, next, "pid"), nsOf(t, after, "pid"); a != b || pids[a] != "" {
		t.Errorf("after the holder's removal: pid ns %s and %s, want one new namespace", a, b)
	}

	s.mu.Lock()
	pins := []string{s.ipcNS.Path, s.utsNS.Path, s.pidNS.Path}
	s.mu.Unlock()
	if err := s.Destroy(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The pins were the agent's descriptors: closed now (a later open
	// may reuse a number, but not for a namespace file).
	for _, p := range pins {
		if _, err := podnsIs("ipc", p); err == nil {
			t.Errorf("pin %s still open after Destroy", p)
		}
	}
}

// TestAgentNamespacePathsRefused: a namespace path naming one of the
// agent's own pid, mount, IPC or UTS namespaces is refused whatever the
// path, with the field named; other namespace files are checked for type.
func TestAgentNamespacePathsRefused(t *testing.T) {
	s := newSandbox(t)
	dir := t.TempDir()
	bind := filepath.Join(dir, "pid-bind")
	if err := os.WriteFile(bind, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("/proc/self/ns/pid", bind, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(bind, unix.MNT_DETACH)
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		kind specs.LinuxNamespaceType
		path string
		want string
	}{
		{specs.PIDNamespace, "/proc/self/ns/pid", "agent's own pid namespace"},
		{specs.PIDNamespace, "/proc/" + itoa(os.Getpid()) + "/task/" + itoa(os.Getpid()) + "/ns/pid", "agent's own pid namespace"},
		{specs.PIDNamespace, bind, "agent's own pid namespace"},
		{specs.MountNamespace, "/proc/" + itoa(os.Getpid()) + "/ns/mnt", "agent's own mount namespace"},
		{specs.IPCNamespace, "/proc/thread-self/ns/ipc", "agent's own ipc namespace"},
		{specs.UTSNamespace, "/proc/self/ns/uts", "agent's own uts namespace"},
		{specs.PIDNamespace, "/proc/self/ns/net", "another type"},
		{specs.PIDNamespace, plain, "not a namespace file"},
		{specs.IPCNamespace, fifo, "not a namespace file"},
		{specs.IPCNamespace, "/nonexistent", "no such file"},
	} {
		spec := testSpec("/bin/true")
		i := slices.IndexFunc(spec.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == tc.kind })
		spec.Linux.Namespaces[i].Path = tc.path
		_, err := s.CreateContainer(ContainerConfig{ID: uniqueID("ns"), Spec: spec, IO: newIO(t, false)})
		field := "OCI.linux.namespaces[" + itoa(i) + "].path"
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), field) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %s: %v; want InvalidArgument naming %s and %q", tc.kind, tc.path, err, field, tc.want)
		}
	}
	// net sysctls of a container in the agent's network namespace: not the
	// pod's in host mode, so refused naming the sysctl (the guest agent
	// writes them there, see tests/katacompat TestKataPodVM).
	spec := kataSpec("/bin/true")
	spec.Linux.Sysctl = map[string]string{"net.ipv4.ip_unprivileged_port_start": "0", "kernel.msgmax": "9000"}
	_, err := s.CreateContainer(ContainerConfig{ID: uniqueID("sysctl"), Spec: spec, IO: newIO(t, false)})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `OCI.linux.sysctl["net.ipv4.ip_unprivileged_port_start"]`) {
		t.Errorf("net sysctl without a netns in host mode: %v", err)
	}
	// The agent's network namespace is the pod's (Kata's runtime strips
	// the network namespace, leaving containers in it): allowed.
	spec = testSpec("/bin/sh", "-c", "readlink /proc/self/ns/net")
	i := slices.IndexFunc(spec.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.NetworkNamespace })
	spec.Linux.Namespaces[i].Path = "/proc/self/ns/net"
	if out, st, _ := run(t, s, spec); st.Code != 0 || strings.TrimSpace(out) != ownNS(t, "net") {
		t.Errorf("container in the agent's netns: %q %+v", out, st)
	}
}

// TestInitRlimitsAndHostOnlyFields: the first process gets the spec's
// rlimits (not the agent's); an unknown rlimit type is refused naming the
// field; host policy names (AppArmor profile, SELinux labels) are ignored.
func TestInitRlimitsAndHostOnlyFields(t *testing.T) {
	s := newSandbox(t)
	spec := testSpec("/bin/sh", "-c", "grep -E 'open files|core file|processes' /proc/self/limits | tr -s ' '")
	spec.Process.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 123, Hard: 456}, {Type: "RLIMIT_CORE", Soft: 0, Hard: 0}, {Type: "RLIMIT_NPROC", Soft: 77, Hard: 88}}
	spec.Process.ApparmorProfile = "cri-containerd.apparmor.d"
	spec.Process.SelinuxLabel = "system_u:system_r:container_t:s0:c1,c2"
	spec.Linux.MountLabel = "system_u:object_r:container_file_t:s0:c1,c2"
	out, st, c := run(t, s, spec)
	want := "Max core file size 0 0 bytes \nMax processes 77 88 processes \nMax open files 123 456 files \n"
	if st.Code != 0 || out != want {
		t.Errorf("limits of the first process:\n%q, want\n%q (status %+v)", out, want, st)
	}
	if c.Spec().Process.ApparmorProfile != "" || c.Spec().Linux.MountLabel != "" {
		t.Errorf("host-only fields kept in the adjusted spec")
	}
	spec = testSpec("/bin/true")
	spec.Process.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 1, Hard: 1}, {Type: "RLIMIT_BOGUS", Soft: 1, Hard: 1}}
	_, err := s.CreateContainer(ContainerConfig{ID: uniqueID("rl"), Spec: spec, IO: newIO(t, false)})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "OCI.process.rlimits[1].type") {
		t.Errorf("unknown rlimit: %v", err)
	}
}

// TestPodNetSysctlsRestoredOnFailedCreate: net sysctls of a container in
// the agent's network namespace (containerd 2's pause) are written to the
// pod's namespace; a create that fails after writing them (a createRuntime
// hook failing) puts the previous values back, a create that succeeds
// keeps its values. The agent's namespace is stood in for by a fresh
// network namespace of the calling thread (sysctl files are bound to the
// namespace of the thread that opens them), so the host's stay untouched.
func TestPodNetSysctlsRestoredOnFailedCreate(t *testing.T) {
	f := false
	s, err := New(Config{StateRoot: t.TempDir(), CgroupParent: "/keel-test", NoPivotRoot: &f, PodNetSysctls: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Destroy(context.Background()) })
	const (
		port  = "/proc/sys/net/ipv4/ip_unprivileged_port_start"
		group = "/proc/sys/net/ipv4/ping_group_range"
	)
	podSpec := func(hook string) *specs.Spec {
		spec := testSpec("sleep", "100")
		i := slices.IndexFunc(spec.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.NetworkNamespace })
		spec.Linux.Namespaces[i].Path = "/proc/self/ns/net"
		spec.Linux.Sysctl = map[string]string{"net.ipv4.ip_unprivileged_port_start": "77", "net.ipv4.ping_group_range": "0 5"}
		if hook != "" {
			spec.Hooks = &specs.Hooks{CreateRuntime: []specs.Hook{{Path: hook}}}
		}
		return spec
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Never unlocked: the thread ends with this goroutine, and its
		// network namespace with it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		read := func(p string) string {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Errorf("read %s: %v", p, err)
			}
			return strings.Join(strings.Fields(string(b)), " ")
		}
		portBefore, groupBefore := read(port), read(group)
		if portBefore == "77" || groupBefore == "0 5" {
			t.Errorf("fresh namespace already has the test's values: %s, %s", portBefore, groupBefore)
			return
		}
		_, err := s.CreateContainer(ContainerConfig{ID: uniqueID("sysctl-fail"), Spec: podSpec("/bin/false"), IO: newIO(t, false)})
		if err == nil {
			t.Error("create with a failing createRuntime hook succeeded")
			return
		}
		if p, g := read(port), read(group); p != portBefore || g != groupBefore {
			t.Errorf("after a failed create: %s=%q, %s=%q; want the previous %q, %q", port, p, group, g, portBefore, groupBefore)
		}
		id := uniqueID("sysctl-ok")
		if _, err := s.CreateContainer(ContainerConfig{ID: id, Spec: podSpec(""), IO: newIO(t, false)}); err != nil {
			t.Errorf("create: %v", err)
			return
		}
		if p, g := read(port), read(group); p != "77" || g != "0 5" {
			t.Errorf("after a create: %s=%q, %s=%q; want the spec's 77, \"0 5\"", port, p, group, g)
		}
		if err := s.RemoveContainer(context.Background(), id, 0); err != nil {
			t.Error(err)
		}
	}()
	<-done
}

// TestCreatePanicRollsBack: a create that panics once the pod's net
// sysctls are written (the server recovers panics) still rolls back: the
// previous values are back, cc.Rollback ran (the caller's storages are
// dropped), Commit did not, and the id is free again. (Before, rollback
// was decided by the returned error, nil during a panic: nothing ran.)
func TestCreatePanicRollsBack(t *testing.T) {
	f := false
	s, err := New(Config{StateRoot: t.TempDir(), CgroupParent: "/keel-test", NoPivotRoot: &f, PodNetSysctls: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Destroy(context.Background()) })
	createFault = func() { panic("injected") }
	t.Cleanup(func() { createFault = nil })
	const port = "/proc/sys/net/ipv4/ip_unprivileged_port_start"
	spec := testSpec("sleep", "100")
	i := slices.IndexFunc(spec.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.NetworkNamespace })
	spec.Linux.Namespaces[i].Path = "/proc/self/ns/net"
	spec.Linux.Sysctl = map[string]string{"net.ipv4.ip_unprivileged_port_start": "77"}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: see TestPodNetSysctlsRestoredOnFailedCreate
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		before, err := os.ReadFile(port)
		if err != nil || strings.TrimSpace(string(before)) == "77" {
			t.Errorf("read %s: %q %v", port, before, err)
			return
		}
		id := uniqueID("panic")
		var commits, rollbacks int
		func() {
			defer func() {
				if r := recover(); r == nil {
					t.Error("the injected panic did not happen")
				}
			}()
			s.CreateContainer(ContainerConfig{ID: id, Spec: spec, IO: newIO(t, false),
				Commit: func() { commits++ }, Rollback: func() { rollbacks++ }})
		}()
		if commits != 0 || rollbacks != 1 {
			t.Errorf("after a panicking create: %d commits, %d rollbacks; want 0, 1", commits, rollbacks)
		}
		if after, _ := os.ReadFile(port); string(after) != string(before) {
			t.Errorf("%s = %q after a panicking create, want the previous %q", port, after, before)
		}
		createFault = nil
		id2 := id
		if _, err := s.CreateContainer(ContainerConfig{ID: id2, Spec: testSpec("true"), IO: newIO(t, false)}); err != nil {
			t.Errorf("the id of a panicked create is not free again: %v", err)
			return
		}
		_ = s.RemoveContainer(context.Background(), id2, 0)
	}()
	<-done
}

// TestPodNetSysctlRestoreKeepsLaterValue: creates A and B of one pod write
// the same net sysctl; B succeeds, then A fails: A leaves B's value (before,
// A wrote its previous value back over it).
func TestPodNetSysctlRestoreKeepsLaterValue(t *testing.T) {
	const port = "/proc/sys/net/ipv4/ip_unprivileged_port_start"
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: see TestPodNetSysctlsRestoredOnFailedCreate
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		log := slog.New(slog.DiscardHandler)
		a, b := &netSysctls{log: log}, &netSysctls{log: log}
		if err := a.set(port, "77"); err != nil {
			t.Error(err)
			return
		}
		if err := b.set(port, "88"); err != nil {
			t.Error(err)
			return
		}
		b.keep()
		a.restore()
		if v, _ := os.ReadFile(port); strings.TrimSpace(string(v)) != "88" {
			t.Errorf("%s = %q after B kept 88 and A failed, want 88", port, v)
		}
		// Alone, a failed create still puts the previous value back.
		c := &netSysctls{log: log}
		if err := c.set(port, "99"); err != nil {
			t.Error(err)
			return
		}
		c.restore()
		if v, _ := os.ReadFile(port); strings.TrimSpace(string(v)) != "88" {
			t.Errorf("%s = %q after a failed create, want the previous 88", port, v)
		}
	}()
	<-done
}
