package container

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/stdio"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

var idSeq int

func newSandbox(t testing.TB) *Sandbox {
	t.Helper()
	f := false
	s, err := New(Config{StateRoot: t.TempDir(), CgroupParent: "/keel-test", NoPivotRoot: &f})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Destroy(context.Background()); err != nil {
			t.Errorf("destroy: %v", err)
		}
	})
	return s
}

func newIO(t testing.TB, stdin bool) *stdio.IO {
	t.Helper()
	io, err := stdio.New(stdio.Options{Stdin: stdin})
	if err != nil {
		t.Fatal(err)
	}
	return io
}

func uniqueID(prefix string) string {
	idSeq++
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), idSeq)
}

// readAll drains stdout until EOF.
func readAll(t testing.TB, s *stdio.IO) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var buf bytes.Buffer
	for {
		b, err := s.ReadStdout(ctx, 65536)
		buf.Write(b)
		if errors.Is(err, io.EOF) {
			return buf.String()
		}
		if err != nil {
			t.Fatalf("read stdout: %v (so far %q)", err, buf.String())
		}
	}
}

func waitStatus(t testing.TB, p *Process) ExitStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// run creates and starts a container running args and returns its init's
// output and status.
func run(t *testing.T, s *Sandbox, spec *specs.Spec) (string, ExitStatus, *Container) {
	t.Helper()
	io := newIO(t, false)
	c, err := s.CreateContainer(ContainerConfig{ID: uniqueID("c"), Spec: spec, IO: io})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	out := readAll(t, io)
	return out, waitStatus(t, c.InitProcess()), c
}

func TestRunInsideNamespaces(t *testing.T) {
	s := newSandbox(t)
	spec := testSpec("/bin/sh", "-c", "echo pid=$$; hostname; grep -c ' /proc ' /proc/self/mounts; cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max")
	limit := int64(64 << 20)
	spec.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &limit}
	out, st, c := run(t, s, spec)
	want := fmt.Sprintf("pid=1\nkeeltest\n1\n%d\n", limit)
	if out != want || st.Code != 0 {
		t.Fatalf("output %q status %+v, want %q", out, st, want)
	}
	if c.State() != StateStopped {
		t.Errorf("state %v after init exit", c.State())
	}
}

func TestExitCodes(t *testing.T) {
	s := newSandbox(t)
	for _, tc := range []struct {
		script string
		code   int
	}{{"true", 0}, {"exit 1", 1}, {"exit 255", 255}} {
		_, st, _ := run(t, s, testSpec("/bin/sh", "-c", tc.script))
		if st.Code != tc.code {
			t.Errorf("%q: status %+v, want %d", tc.script, st, tc.code)
		}
	}
}

func TestCreateStartExecSignalRemove(t *testing.T) {
	s := newSandbox(t)
	cgBase := "/sys/fs/cgroup/memory/keel-test"
	io := newIO(t, false)
	id := uniqueID("life")
	c, err := s.CreateContainer(ContainerConfig{ID: id, Spec: testSpec("/bin/sleep", "1000"), IO: io})
	if err != nil {
		t.Fatal(err)
	}
	if c.State() != StateCreated {
		t.Fatalf("state %v", c.State())
	}
	// Exec before start is refused.
	if _, err := c.Exec("e0", &specs.Process{Args: []string{"/bin/true"}, Cwd: "/"}, nil); !errors.Is(err, ErrState) {
		t.Fatalf("exec in created: %v", err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); !errors.Is(err, ErrState) {
		t.Fatalf("second start: %v", err)
	}
	eio := newIO(t, true)
	p, err := c.Exec("e1", &specs.Process{Args: []string{"/bin/sh", "-c", "read x; echo got $x; cat /proc/1/cmdline | tr '\\0' ' '; exit 3"}, Cwd: "/", Env: []string{"PATH=/bin"}}, eio)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := eio.Write(context.Background(), []byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	out := readAll(t, eio)
	if st := waitStatus(t, p); st.Code != 3 {
		t.Errorf("exec status %+v", st)
	}
	if !strings.HasPrefix(out, "got hello\n") {
		t.Errorf("exec output %q", out)
	}
	// Missing binary fails at once.
	start := time.Now()
	_, err = c.Exec("e2", &specs.Process{Args: []string{"/bin/nonexistent"}, Cwd: "/"}, newIO(t, false))
	if !errors.Is(err, ErrInvalid) || time.Since(start) > 5*time.Second {
		t.Errorf("exec of a missing binary: %v after %v", err, time.Since(start))
	}
	if _, err := c.Exec("e1", &specs.Process{Args: []string{"/bin/true"}, Cwd: "/"}, nil); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate exec id: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cgBase, id)); err != nil {
		t.Errorf("cgroup dir: %v", err)
	}
	// sleep as pid 1 has no SIGTERM handler: SIGTERM is escalated to
	// SIGKILL, else the kernel would drop it.
	if err := c.Signal("", unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if st := waitStatus(t, c.InitProcess()); st.Code != 137 {
		t.Errorf("status after SIGTERM %+v", st)
	}
	if err := c.Signal("", unix.SIGKILL); err != nil {
		t.Errorf("SIGKILL to an exited init: %v", err)
	}
	if err := s.RemoveContainer(context.Background(), id, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(cgBase, id)); !os.IsNotExist(err) {
		t.Errorf("cgroup dir left: %v", err)
	}
	if _, err := s.Container(id); !errors.Is(err, ErrNotFound) {
		t.Errorf("container after remove: %v", err)
	}
}

func TestSignalHandledTerm(t *testing.T) {
	// An init that traps TERM gets TERM, not an escalation.
	s := newSandbox(t)
	io := newIO(t, false)
	c, err := s.CreateContainer(ContainerConfig{ID: uniqueID("trap"), Spec: testSpec("/bin/sh", "-c", "trap 'echo term; exit 3' TERM; echo ready; while true; do sleep 0.05; done"), IO: io})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadStdout(context.Background(), 100); err != nil || string(b) != "ready\n" {
		t.Fatalf("%q %v", b, err)
	}
	if err := c.Signal("", unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if st := waitStatus(t, c.InitProcess()); st.Code != 3 {
		t.Errorf("status %+v, want 3 from the trap", st)
	}
	if out := readAll(t, io); out != "term\n" {
		t.Errorf("output %q", out)
	}
	if err := c.Signal("", 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("signal 0: %v", err)
	}
}

func TestPauseResume(t *testing.T) {
	s := newSandbox(t)
	io := newIO(t, false)
	c, err := s.CreateContainer(ContainerConfig{ID: uniqueID("pause"), Spec: testSpec("/bin/sh", "-c", "i=0; while true; do i=$((i+1)); done"), IO: io})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	read := func() string {
		// CPU time (utime+stime) of the busy loop.
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.InitProcess().Pid))
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
		return f[11] + "+" + f[12]
	}
	time.Sleep(100 * time.Millisecond)
	if err := c.Pause(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	a := read()
	time.Sleep(200 * time.Millisecond)
	if b := read(); a != b || a == "" {
		t.Errorf("paused container progressed: %q -> %q", a, b)
	}
	if err := c.Resume(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if b := read(); a == b {
		t.Errorf("resumed container did not progress: %q", b)
	}
	if err := c.Resume(); !errors.Is(err, ErrState) {
		t.Errorf("resume running: %v", err)
	}
	// Remove of a paused container works too.
	if err := c.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveContainer(context.Background(), c.ID(), 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestUpdateAndStats(t *testing.T) {
	s := newSandbox(t)
	c, err := s.CreateContainer(ContainerConfig{ID: uniqueID("upd"), Spec: testSpec("/bin/sleep", "1000"), IO: newIO(t, false)})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	limit := int64(32 << 20)
	if err := c.Update(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory/keel-test", c.ID(), "memory.limit_in_bytes"))
	if err != nil || strings.TrimSpace(string(b)) != strconv.FormatInt(limit, 10) {
		t.Errorf("memory limit after update: %q %v", b, err)
	}
	st, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Cgroup == nil || st.Cgroup.PidsStats.Current < 1 || st.Cgroup.MemoryStats.Usage.Usage == 0 {
		t.Errorf("cgroup stats %+v", st.Cgroup)
	}
	if len(st.Network) == 0 || st.Network[0].Name != "lo" {
		t.Errorf("network stats %+v", st.Network)
	}
}

func TestSandboxDNSAndPidns(t *testing.T) {
	s := newSandbox(t)
	if err := s.Create(SandboxConfig{ID: "sb1", Hostname: "sbhost", DNS: []string{"nameserver 10.0.0.53"}, SandboxPidns: true}); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(SandboxConfig{ID: "sb1"}); !errors.Is(err, ErrExists) {
		t.Fatalf("second CreateSandbox: %v", err)
	}
	spec := testSpec("/bin/sleep", "1000")
	spec.Hostname = ""
	pause, err := s.CreateContainer(ContainerConfig{ID: uniqueID("pause"), Spec: spec, SandboxPidns: true, IO: newIO(t, false)})
	if err != nil {
		t.Fatal(err)
	}
	if err := pause.Start(); err != nil {
		t.Fatal(err)
	}
	spec2 := testSpec("/bin/sh", "-c", "cat /etc/resolv.conf; hostname; echo $$; ps -o pid,comm | grep -c sleep")
	spec2.Hostname = ""
	io := newIO(t, false)
	c2, err := s.CreateContainer(ContainerConfig{ID: uniqueID("app"), Spec: spec2, SandboxPidns: true, IO: io})
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.Start(); err != nil {
		t.Fatal(err)
	}
	out := readAll(t, io)
	waitStatus(t, c2.InitProcess())
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || lines[0] != "nameserver 10.0.0.53" || lines[1] != "sbhost" || lines[2] == "1" || lines[3] != "1" {
		t.Errorf("output in shared pidns: %q", out)
	}
}

type fakeOOM struct {
	watched   map[string]map[string]string
	unwatched []string
}

func (f *fakeOOM) WatchPaths(id string, p map[string]string) error { f.watched[id] = p; return nil }
func (f *fakeOOM) Unwatch(id string)                               { f.unwatched = append(f.unwatched, id) }

func TestOOMWatchHook(t *testing.T) {
	f := &fakeOOM{watched: map[string]map[string]string{}}
	no := false
	s, err := New(Config{StateRoot: t.TempDir(), CgroupParent: "/keel-test", NoPivotRoot: &no, OOM: f})
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.CreateContainer(ContainerConfig{ID: uniqueID("oom"), Spec: testSpec("/bin/true"), IO: newIO(t, false)})
	if err != nil {
		t.Fatal(err)
	}
	if p := f.watched[c.ID()]["memory"]; !strings.HasSuffix(p, "/keel-test/"+c.ID()) {
		t.Errorf("memory cgroup path %q", p)
	}
	if err := s.Destroy(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(f.unwatched) != 1 || f.unwatched[0] != c.ID() {
		t.Errorf("unwatched %v", f.unwatched)
	}
}

func TestRootIsInitramfs(t *testing.T) {
	for _, tc := range []struct {
		magic     int64
		mountinfo string
		want      bool
	}{
		{unix.RAMFS_MAGIC, "1 1 0:2 / / rw - rootfs rootfs rw\n", true},
		{unix.TMPFS_MAGIC, "1 1 0:2 / / rw shared:1 - rootfs none rw\n21 1 0:5 / /proc rw - proc proc rw\n", true},
		{unix.TMPFS_MAGIC, "27 1 0:30 / / rw - tmpfs tmpfs rw\n", false},
		{0xEF53, "27 1 254:0 / / rw - ext4 /dev/vda rw\n", false},
		{unix.RAMFS_MAGIC, "garbage\n- -\n", false},
	} {
		if got := rootIsInitramfs(tc.magic, strings.NewReader(tc.mountinfo)); got != tc.want {
			t.Errorf("%x %q: got %v", tc.magic, tc.mountinfo, got)
		}
	}
	// The live answer agrees with /proc/self/mounts, a second view of the
	// same fact: the root this process sees is the kernel's "rootfs" on a
	// ramfs/tmpfs (false on a disk-rooted host, true in a guest booted from
	// an initramfs).
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		t.Fatal(err)
	}
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	want := false
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[1] == "/" {
			want = (f[0] == "rootfs" || f[2] == "rootfs") && (st.Type == unix.RAMFS_MAGIC || st.Type == unix.TMPFS_MAGIC)
		}
	}
	if got := RootIsInitramfs(); got != want {
		t.Errorf("RootIsInitramfs() = %v, /proc/self/mounts and statfs say %v", got, want)
	}
}

// TestRemoveTimeout: a process that cannot die in time (frozen in a child
// freezer cgroup the container does not know about, cgroup v1) makes
// Remove with a timeout fail with ErrTimeout and keep the container; once
// it can die, Remove succeeds and leaves nothing.
func TestRemoveTimeout(t *testing.T) {
	base := "/sys/fs/cgroup/freezer/keel-test"
	if _, err := os.Stat(base); err != nil {
		t.Skip("no cgroup v1 freezer")
	}
	s := newSandbox(t)
	c, err := s.CreateContainer(ContainerConfig{ID: uniqueID("stuck"), Spec: testSpec("/bin/sleep", "1000"), IO: newIO(t, false)})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	child := filepath.Join(base, c.ID(), "stuck")
	if err := os.Mkdir(child, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(child)
	write := func(file, v string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(child, file), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("cgroup.procs", strconv.Itoa(c.InitProcess().Pid))
	write("freezer.state", "FROZEN")
	start := time.Now()
	err = s.RemoveContainer(context.Background(), c.ID(), 300*time.Millisecond)
	if !errors.Is(err, ErrTimeout) || time.Since(start) > 5*time.Second {
		t.Fatalf("remove of an unkillable container: %v after %v", err, time.Since(start))
	}
	if _, err := s.Container(c.ID()); err != nil {
		t.Fatalf("container gone after a timed-out remove: %v", err)
	}
	write("freezer.state", "THAWED")
	<-c.InitProcess().Done()
	if err := os.Remove(child); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveContainer(context.Background(), c.ID(), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(base, c.ID())); !os.IsNotExist(err) {
		t.Errorf("freezer cgroup left: %v", err)
	}
}

// TestHooks: OCI hooks run by libcontainer through os/exec are not robbed
// of their child by the reaper (create, poststart under the start lock,
// poststop under the destroy lock).
func TestHooks(t *testing.T) {
	s := newSandbox(t)
	log := filepath.Join(t.TempDir(), "hooks.log")
	hook := func(name string) []specs.Hook {
		return []specs.Hook{{Path: "/bin/sh", Args: []string{"sh", "-c", "echo " + name + " >> " + log}}}
	}
	spec := testSpec("/bin/true")
	spec.Hooks = &specs.Hooks{CreateRuntime: hook("createRuntime"), Poststart: hook("poststart"), Poststop: hook("poststop")}
	for i := range 3 {
		_, st, c := run(t, s, spec)
		if st.Code != 0 {
			t.Fatal(st)
		}
		if err := s.RemoveContainer(context.Background(), c.ID(), 0); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
	}
	b, _ := os.ReadFile(log)
	if want := strings.Repeat("createRuntime\npoststart\npoststop\n", 3); string(b) != want {
		t.Errorf("hook log %q, want %q", b, want)
	}
}

func TestStateMachine(t *testing.T) {
	s := newSandbox(t)
	c, err := s.CreateContainer(ContainerConfig{ID: uniqueID("sm"), Spec: testSpec("/bin/sleep", "1000"), IO: newIO(t, false)})
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		op   func() error
		ok   bool
		want State
	}{
		{"pause created", c.Pause, false, StateCreated},
		{"resume created", c.Resume, false, StateCreated},
		{"start", c.Start, true, StateRunning},
		{"start again", c.Start, false, StateRunning},
		{"resume running", c.Resume, false, StateRunning},
		{"pause", c.Pause, true, StatePaused},
		{"pause again", c.Pause, false, StatePaused},
		{"resume", c.Resume, true, StateRunning},
		{"kill", func() error { return c.Signal("", unix.SIGKILL) }, true, StateStopped},
		{"start stopped", c.Start, false, StateStopped},
		{"pause stopped", c.Pause, false, StateStopped},
	}
	for _, st := range steps {
		err := st.op()
		if (err == nil) != st.ok || (err != nil && !errors.Is(err, ErrState)) {
			t.Fatalf("%s: %v", st.name, err)
		}
		if st.name == "kill" {
			waitStatus(t, c.InitProcess())
		}
		if got := c.State(); got != st.want {
			t.Fatalf("%s: state %v, want %v", st.name, got, st.want)
		}
	}
	if _, err := c.Exec("late", &specs.Process{Args: []string{"/bin/true"}, Cwd: "/"}, nil); !errors.Is(err, ErrState) {
		t.Errorf("exec in stopped: %v", err)
	}
	if err := s.RemoveContainer(context.Background(), c.ID(), 0); err != nil {
		t.Fatal(err)
	}
	if c.State() != StateRemoved {
		t.Errorf("state after remove %v", c.State())
	}
}

// TestStartDoesNotAwaitExecve: StartContainer answers once the init has
// passed the exec fifo, without waiting for its execve (a startContainer
// hook holds the init there for 600 ms); an exec and a signal right after
// it still meet the program, not runc's init: the exec'd process sees the
// program as pid 1, and SIGTERM to a program with no handler is escalated
// to SIGKILL (runc's Go init would have caught it).
func TestStartDoesNotAwaitExecve(t *testing.T) {
	s := newSandbox(t)
	spec := testSpec("/bin/sleep", "1000")
	spec.Hooks = &specs.Hooks{StartContainer: []specs.Hook{{Path: "/bin/sleep", Args: []string{"sleep", "0.6"}}}}
	c, err := s.CreateContainer(ContainerConfig{ID: uniqueID("settle"), Spec: spec, IO: newIO(t, false)})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c.InitProcess().Pid))
	if got := strings.TrimSpace(string(b)); err != nil || got != runcInitComm {
		t.Errorf("init's name right after Start: %q, %v; want %q (Start waited for the execve)", got, err, runcInitComm)
	}
	eio := newIO(t, false)
	p, err := c.Exec("comm", &specs.Process{Args: []string{"/bin/cat", "/proc/1/comm"}, Cwd: "/"}, eio)
	if err != nil {
		t.Fatal(err)
	}
	if out := readAll(t, eio); out != "sleep\n" {
		t.Errorf("pid 1 seen by an exec right after Start: %q, want \"sleep\\n\"", out)
	}
	if st := waitStatus(t, p); st.Code != 0 {
		t.Errorf("exec status %+v", st)
	}
	if err := c.Signal("", unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if st := waitStatus(t, c.InitProcess()); st.Code != 137 {
		t.Errorf("status after SIGTERM %+v, want 137 (escalated to SIGKILL)", st)
	}
	if err := s.RemoveContainer(context.Background(), c.ID(), 0); err != nil {
		t.Fatal(err)
	}
}

// TestSignalRightAfterStart: SIGTERM sent right after Start, with the init
// still on its way to execve, is escalated for a program with no handler.
func TestSignalRightAfterStart(t *testing.T) {
	s := newSandbox(t)
	spec := testSpec("/bin/sleep", "1000")
	spec.Hooks = &specs.Hooks{StartContainer: []specs.Hook{{Path: "/bin/sleep", Args: []string{"sleep", "0.3"}}}}
	c, err := s.CreateContainer(ContainerConfig{ID: uniqueID("sigstart"), Spec: spec, IO: newIO(t, false)})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.Signal("", unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if st := waitStatus(t, c.InitProcess()); st.Code != 137 {
		t.Errorf("status after SIGTERM %+v, want 137 (escalated to SIGKILL)", st)
	}
	if err := s.RemoveContainer(context.Background(), c.ID(), 0); err != nil {
		t.Fatal(err)
	}
}

// TestSettleWaitsOnce: an init held before its execve (a startContainer
// hook sleeping 5 s) delays the first signal after Start by startSettle,
// and no later one.
func TestSettleWaitsOnce(t *testing.T) {
	s := newSandbox(t)
	spec := testSpec("/bin/sleep", "1000")
	spec.Hooks = &specs.Hooks{StartContainer: []specs.Hook{{Path: "/bin/sleep", Args: []string{"sleep", "5"}}}}
	c, err := s.CreateContainer(ContainerConfig{ID: uniqueID("once"), Spec: spec, IO: newIO(t, false)})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := c.Signal("", unix.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d < startSettle-50*time.Millisecond {
		t.Errorf("first signal after %v, want a wait of startSettle (%v) for the held init", d, startSettle)
	}
	t0 = time.Now()
	if err := c.Signal("", unix.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > startSettle/2 {
		t.Errorf("second signal took %v: waited again", d)
	}
	if err := s.RemoveContainer(context.Background(), c.ID(), 0); err != nil {
		t.Fatal(err)
	}
}

// CreateContainer completes a copy of the caller's spec unless the caller
// hands it over (SpecOwned, as the RPC edge does): then the container
// keeps that very spec, completed in place, and no copy is made.
func TestCreateSpecOwnership(t *testing.T) {
	s := newSandbox(t)
	// The sandbox's hostname and DNS complete every container's spec.
	if err := s.Create(SandboxConfig{ID: "own", Hostname: "ownhost", DNS: []string{"nameserver 10.0.0.53"}}); err != nil {
		t.Fatal(err)
	}
	for _, owned := range []bool{false, true} {
		spec := testSpec("/bin/true")
		spec.Hostname = ""
		before, err := json.Marshal(spec)
		if err != nil {
			t.Fatal(err)
		}
		c, err := s.CreateContainer(ContainerConfig{ID: uniqueID("own"), Spec: spec, SpecOwned: owned, IO: newIO(t, false)})
		if err != nil {
			t.Fatal(err)
		}
		after, err := json.Marshal(spec)
		if err != nil {
			t.Fatal(err)
		}
		kept, err := json.Marshal(c.Spec())
		if err != nil {
			t.Fatal(err)
		}
		if owned {
			if c.Spec() != spec {
				t.Errorf("owned: the container keeps a copy, not the spec handed over")
			}
			if bytes.Equal(after, before) {
				t.Errorf("owned: the spec handed over was not completed in place")
			}
		} else {
			if c.Spec() == spec {
				t.Errorf("not owned: the container keeps the caller's spec")
			}
			if !bytes.Equal(after, before) {
				t.Errorf("not owned: the caller's spec changed:\n%s\n->\n%s", before, after)
			}
		}
		if bytes.Equal(kept, before) {
			t.Errorf("owned=%v: the container's spec was not completed (mounts, namespaces)", owned)
		}
		if err := s.RemoveContainer(context.Background(), c.ID(), 0); err != nil {
			t.Fatal(err)
		}
	}
}
