package boot

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// agent is keel-agent's boot running as PID 1 of fresh pid, mount, uts,
// net and cgroup namespaces, chrooted into a prepared root.
type agent struct {
	t      *testing.T
	cmd    *exec.Cmd
	root   string
	pid    int // in the host pid namespace
	mu     sync.Mutex
	stderr strings.Builder
	ready  chan string
	exited chan struct{}
	ws     syscall.WaitStatus
	cgroup string // host path of the agent's cgroup, removed at cleanup
}

func buildPID1(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pid1")
	cmd := exec.Command(goTool(t), "build", "-o", bin, "./testdata/pid1")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // static: it re-execs inside a new root
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

func startAgent(t *testing.T, bin, cmdline string, env ...string) *agent {
	t.Helper()
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	if b, err := os.ReadFile("/bin/busybox"); err == nil {
		os.WriteFile(filepath.Join(root, "bin/busybox"), b, 0o755)
		os.Symlink("busybox", filepath.Join(root, "bin/sh"))
	}
	removeAgentCgroups() // left by an earlier, killed run (rmdir only empties)
	a := &agent{t: t, root: root, ready: make(chan string, 1), exited: make(chan struct{})}
	a.cmd = exec.Command(bin)
	a.cmd.Env = append([]string{"KEEL_TEST_ROOT=" + root, "KEEL_TEST_CMDLINE=" + cmdline}, env...)
	a.cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWPID | unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP | unix.CLONE_NEWIPC,
		Pdeathsig:  syscall.SIGKILL,
	}
	pipe, err := a.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Skipf("cannot start a process in new namespaces: %v", err)
	}
	a.pid = a.cmd.Process.Pid
	t.Cleanup(a.cleanup)
	go func() {
		sc := bufio.NewScanner(pipe)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			a.mu.Lock()
			a.stderr.WriteString(line + "\n")
			a.mu.Unlock()
			if strings.HasPrefix(line, "READY ") {
				a.ready <- line
			}
		}
		a.cmd.Wait()
		a.ws = a.cmd.ProcessState.Sys().(syscall.WaitStatus)
		close(a.exited)
	}()
	return a
}

func (a *agent) log() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stderr.String()
}

// waitLog waits (the log is written asynchronously) until the agent's
// output contains every one of subs.
func (a *agent) waitLog(subs ...string) bool {
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, all := a.log(), true
		for _, s := range subs {
			all = all && strings.Contains(l, s)
		}
		if all {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (a *agent) waitReady() string {
	a.t.Helper()
	select {
	case l := <-a.ready:
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", a.pid)); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if p, ok := strings.CutPrefix(line, "0::"); ok && strings.HasSuffix(p, "/keel-agent") {
					a.cgroup = p
				}
			}
		}
		return l
	case <-a.exited:
		a.t.Fatalf("agent exited before ready (%v):\n%s", a.ws, a.log())
	case <-time.After(30 * time.Second):
		a.t.Fatalf("agent not ready:\n%s", a.log())
	}
	return ""
}

func (a *agent) waitExit() syscall.WaitStatus {
	a.t.Helper()
	select {
	case <-a.exited:
		return a.ws
	case <-time.After(30 * time.Second):
		a.t.Fatalf("agent did not exit:\n%s", a.log())
	}
	return 0
}

// cleanup kills what is left and removes the agent's cgroup on the host.
func (a *agent) cleanup() {
	select {
	case <-a.exited:
	default:
		a.cmd.Process.Kill()
		<-a.exited
	}
	if a.cgroup != "" {
		for _, mnt := range cgroup2Mounts() {
			os.Remove(filepath.Join(mnt, a.cgroup))
		}
	}
	removeAgentCgroups()
	if a.t.Failed() {
		a.t.Logf("agent log:\n%s", a.log())
	}
}

func removeAgentCgroups() {
	b, _ := os.ReadFile("/proc/self/cgroup")
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			for _, mnt := range cgroup2Mounts() {
				os.Remove(filepath.Join(mnt, p, "keel-agent"))
			}
		}
	}
}

func cgroup2Mounts() []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 8 && strings.Contains(line, " - cgroup2 ") {
			out = append(out, f[4])
		}
	}
	return out
}

// shell runs script in the agent's debug console and returns its output.
func (a *agent) shell(script string) string {
	a.t.Helper()
	return a.shellAt(filepath.Join(a.root, "sockets/1026.sock"), script)
}

func (a *agent) shellAt(sock, script string) string {
	a.t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		a.t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	fmt.Fprintf(c, "%s\nexit\n", script)
	out, _ := io.ReadAll(c)
	return strings.ReplaceAll(string(out), "\r", "")
}

// goTool finds the go command (`go test` may run with a PATH without it).
func goTool(t *testing.T) string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if g := os.Getenv("GOROOT"); g != "" {
		return filepath.Join(g, "bin", "go")
	}
	t.Skip("go command not found")
	return ""
}

func requireNamespaces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if testing.Short() {
		t.Skip("builds and boots a PID 1")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("needs busybox-static for the debug console shell")
	}
}

func TestPID1InNamespace(t *testing.T) {
	requireNamespaces(t)
	bin := buildPID1(t)
	a := startAgent(t, bin, "agent.log=debug agent.debug_console agent.log_vport=1025 agent.hostname=keel-test agent.entropy=00112233445566778899 agent.bogus=1")
	ready := a.waitReady()
	t.Log(ready)
	if !strings.Contains(ready, "listener_ready=") || !strings.Contains(ready, "init_start=") {
		t.Errorf("timeline: %s", ready)
	}

	// The mount table PID 1 made (as the agent sees it).
	mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", a.pid))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		for i := 6; i < len(f)-2; i++ {
			if f[i] == "-" {
				got[f[4]] = f[i+1] + " " + f[i+3]
			}
		}
	}
	for mp, want := range map[string]string{
		"/proc": "proc", "/sys": "sysfs", "/dev": "tmpfs", "/dev/pts": "devpts", "/dev/shm": "tmpfs",
		"/run": "tmpfs", "/tmp": "tmpfs", "/sys/fs/cgroup": "cgroup2",
	} {
		if !strings.HasPrefix(got[mp], want+" ") {
			t.Errorf("%s: mounted %q, want %s", mp, got[mp], want)
		}
	}
	if !strings.Contains(got["/dev/pts"], "ptmxmode=666") {
		t.Errorf("devpts options %q", got["/dev/pts"])
	}
	if l, err := os.Readlink(fmt.Sprintf("/proc/%d/root/dev/ptmx", a.pid)); err != nil || l != "pts/ptmx" {
		t.Errorf("/dev/ptmx -> %q, %v", l, err)
	}
	if a.cgroup == "" {
		t.Errorf("agent not moved into its cgroup")
	}

	// The whole configuration is a debug line of its own; the info line
	// announcing the boot does not format it (boot.go says why).
	if !a.waitLog(`"msg":"configuration"`, "ServerAddr:", `"msg":"keel-agent booting"`) {
		t.Errorf("no debug configuration line or boot line:\n%s", a.log())
	}
	for _, l := range strings.Split(a.log(), "\n") {
		if strings.Contains(l, `"msg":"keel-agent booting"`) && strings.Contains(l, "ServerAddr:") {
			t.Errorf("the boot line still formats the configuration: %s", l)
		}
	}

	// Warnings for unknown keys are logged, not fatal.
	if !a.waitLog("agent.bogus") {
		t.Error("unknown key not warned about")
	}

	// The log stream replays early boot lines.
	lc, err := net.Dial("unix", filepath.Join(a.root, "sockets/1025.sock"))
	if err != nil {
		t.Fatal(err)
	}
	lc.SetDeadline(time.Now().Add(10 * time.Second))
	first, err := bufio.NewReader(lc).ReadString('\n')
	lc.Close()
	var rec map[string]any
	if err != nil || json.Unmarshal([]byte(first), &rec) != nil || !strings.Contains(fmt.Sprint(rec["msg"]), "mkdir -p") {
		t.Errorf("first log-stream line %q (%v)", first, err)
	}

	// System state, seen from inside.
	out := a.shell("hostname; cat /sys/class/net/lo/flags; echo PATH=$PATH; echo PID=$$; cat /proc/1/cgroup")
	for _, want := range []string{"keel-test\n", "PATH=/usr/local/sbin:", "0::/keel-agent"} {
		if !strings.Contains(out, want) {
			t.Errorf("shell output lacks %q:\n%s", want, out)
		}
	}
	if i := strings.Index(out, "0x"); i < 0 || !flagsUp(out[i:]) {
		t.Errorf("lo not up:\n%s", out)
	}

	// Orphans are re-parented to PID 1 and reaped.
	before := zombiesOf(a.pid)
	out = a.shell("sh -c 'sleep 0.3 & sleep 1000 & echo ORPHANS'")
	if !strings.Contains(out, "ORPHANS") {
		t.Fatalf("orphan spawn: %s", out)
	}
	var long int
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		long = childNamed(a.pid, "sleep")
		if long != 0 && len(zombiesOf(a.pid)) == len(before) && countChildren(a.pid, "sleep") == 1 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if long == 0 || countChildren(a.pid, "sleep") != 1 {
		t.Fatalf("orphans not re-parented to PID 1 / short one not reaped: children %v", children(a.pid))
	}
	if z := zombiesOf(a.pid); len(z) > len(before) {
		t.Errorf("zombies left: %v", z)
	}

	// SIGTERM: stop hooks, then reboot(POWER_OFF), which for PID 1 of a
	// pid namespace kills the namespace; the parent sees SIGINT.
	a.cmd.Process.Signal(syscall.SIGTERM)
	ws := a.waitExit()
	if !ws.Signaled() || ws.Signal() != syscall.SIGINT {
		t.Errorf("exit status %v, want killed by SIGINT (reboot POWER_OFF in a pid namespace)", ws)
	}
	if l := a.log(); !strings.Contains(l, "STOP HOOK RAN") || !strings.Contains(l, `"reason":"signal terminated"`) {
		t.Errorf("shutdown path not logged:\n%s", l)
	}
	// Nothing of the namespace remains.
	if err := syscall.Kill(long, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("orphan %d survived the power-off: %v", long, err)
	}
}

// TestPID1SwitchRoot boots from a tmpfs "initramfs" onto an ext4 image on
// a loop device: mount, move, delete, chroot, re-exec, stage 2.
func TestPID1SwitchRoot(t *testing.T) {
	requireNamespaces(t)
	for _, tool := range []string{"mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skip(err)
		}
	}
	bin := buildPID1(t)
	tmp := t.TempDir()
	img := filepath.Join(tmp, "img")
	for _, d := range []string{"sbin", "bin", "dev", "proc", "sys", "run", "tmp"} {
		os.MkdirAll(filepath.Join(img, d), 0o755)
	}
	copyFile(t, bin, filepath.Join(img, "sbin/init"))
	copyFile(t, "/bin/busybox", filepath.Join(img, "bin/busybox"))
	os.Symlink("busybox", filepath.Join(img, "bin/sh"))
	file := filepath.Join(tmp, "root.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-b", "4096", "-d", img, file, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	loop := attachLoop(t, file)
	a := startAgent(t, bin, "agent.log=debug agent.debug_console agent.rootfs=/dev/"+filepath.Base(loop)+" rootfstype=ext4 rw",
		"KEEL_TEST_TMPFS_ROOT=1", "KEEL_TEST_BLOCKDEV="+loop)
	ready := a.waitReady()
	t.Log(ready)
	if !strings.Contains(ready, "root_switched=") || !strings.Contains(ready, "initramfs=false") || !strings.Contains(ready, "init_start=") {
		t.Errorf("ready line: %s", ready)
	}
	mi, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", a.pid))
	var rootLine string
	mps := map[string]bool{}
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 {
			mps[f[4]] = true
			if f[4] == "/" {
				rootLine = line
			}
		}
	}
	if !strings.Contains(rootLine, " - ext4 ") {
		t.Errorf("root mount: %q", rootLine)
	}
	for _, mp := range []string{"/dev", "/dev/pts", "/proc", "/sys", "/sys/fs/cgroup", "/run", "/tmp"} {
		if !mps[mp] {
			t.Errorf("%s not carried over to the new root:\n%s", mp, mi)
		}
	}
	if !a.waitLog(`"stage":"after switch_root"`, "initramfs contents removed", `"msg":"exec"`) {
		t.Errorf("stage 2 not logged")
	}
	sh := a.shellAt(fmt.Sprintf("/proc/%d/root/sockets/1026.sock", a.pid), "cat /marker; echo PID=$PPID; ls /")
	if !strings.Contains(sh, "No such file") || !strings.Contains(sh, "sbin") {
		t.Errorf("shell in the new root:\n%s", sh)
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	if ws := a.waitExit(); !ws.Signaled() || ws.Signal() != syscall.SIGINT {
		t.Errorf("exit status %v", ws)
	}
}

// attachLoop attaches file to a free loop device with LO_FLAGS_AUTOCLEAR:
// the device detaches itself once nothing holds it (our fd, closed at
// cleanup, and the agent's mount, gone with its namespace), even if the
// test binary is killed.
func attachLoop(t *testing.T, file string) string {
	t.Helper()
	ctl, err := unix.Open("/dev/loop-control", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no loop devices: %v", err)
	}
	defer unix.Close(ctl)
	ffd, err := unix.Open(file, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ffd)
	for try := 0; try < 10; try++ {
		n, err := unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE)
		if err != nil {
			t.Skipf("LOOP_CTL_GET_FREE: %v", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		lfd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Skipf("open %s: %v", dev, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(ffd)}
		cfg.Info.Flags = unix.LO_FLAGS_AUTOCLEAR
		if err := unix.IoctlLoopConfigure(lfd, &cfg); err != nil {
			unix.Close(lfd)
			if errors.Is(err, unix.EBUSY) {
				continue // taken by someone else meanwhile
			}
			t.Skipf("LOOP_CONFIGURE: %v", err)
		}
		t.Cleanup(func() { unix.Close(lfd) })
		return dev
	}
	t.Skip("no free loop device")
	return ""
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestPID1PanicPowersOff(t *testing.T) {
	requireNamespaces(t)
	bin := buildPID1(t)
	a := startAgent(t, bin, "", "KEEL_TEST_PANIC=1")
	ws := a.waitExit()
	if !ws.Signaled() || ws.Signal() != syscall.SIGINT {
		t.Errorf("exit status %v, want the power-off's SIGINT", ws)
	}
	if l := a.log(); !strings.Contains(l, `"msg":"panic"`) || !strings.Contains(l, "test panic") || !strings.Contains(l, "goroutine") {
		t.Errorf("panic not logged with its stack:\n%s", l)
	}
	removeAgentCgroups()
}

// TestHostModeTouchesNothing runs Run in a child process: host-mode Run
// starts the reaper, which would reap this test process's other children.
func TestHostModeTouchesNothing(t *testing.T) {
	if os.Getenv("KEEL_TEST_HOSTMODE") == "1" {
		hostModeChild(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHostModeTouchesNothing$", "-test.v")
	cmd.Env = append(os.Environ(), "KEEL_TEST_HOSTMODE=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "HOSTMODE OK") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func hostModeChild(t *testing.T) {
	before, _ := os.ReadFile("/proc/self/mountinfo")
	res, err := RunWith(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.PID1 || res.Logger == nil || res.Config.ServerAddr != "vsock://-1:1024" {
		t.Fatalf("host mode result %+v", res)
	}
	after, _ := os.ReadFile("/proc/self/mountinfo")
	if string(before) != string(after) {
		t.Fatal("host mode changed the mount table")
	}
	fmt.Println("HOSTMODE OK")
}

func flagsUp(flags string) bool {
	f := strings.Fields(flags)
	if len(f) == 0 {
		return false
	}
	v, err := strconv.ParseUint(strings.TrimPrefix(f[0], "0x"), 16, 32)
	return err == nil && v&unix.IFF_UP != 0
}

type proc struct {
	pid   int
	name  string
	state string
}

func children(ppid int) []proc {
	var out []proc
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		var p proc
		p.pid = pid
		isChild := false
		for _, line := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(line, ":")
			v = strings.TrimSpace(v)
			switch k {
			case "Name":
				p.name = v
			case "State":
				p.state = v
			case "PPid":
				isChild = v == strconv.Itoa(ppid)
			}
		}
		if isChild {
			out = append(out, p)
		}
	}
	return out
}

func zombiesOf(ppid int) []proc {
	var z []proc
	for _, c := range children(ppid) {
		if strings.HasPrefix(c.state, "Z") {
			z = append(z, c)
		}
	}
	return z
}

func childNamed(ppid int, name string) int {
	for _, c := range children(ppid) {
		if c.name == name && !strings.HasPrefix(c.state, "Z") {
			return c.pid
		}
	}
	return 0
}

func countChildren(ppid int, name string) int {
	n := 0
	for _, c := range children(ppid) {
		if c.name == name {
			n++
		}
	}
	return n
}
