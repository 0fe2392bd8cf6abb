package containerbench

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/runc/libcontainer"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/keelvm/keel/agent/container/containertest"
)

// Every container process starts as the agent binary re-executed as
// `keel-agent init`: nsexec, the Go runtime and every package's
// initialisation run before libcontainer's init gets control. These
// benchmarks start a binary exactly so (startInit) up to libcontainer.Init's
// read of its configuration: the keel-agent binary vs a static binary
// holding libcontainer only, built with the agent's tags and link flags.

// buildLikeAgent builds the package pkg into out as `make agent` builds
// keel-agent: cgo (libcontainer's nsenter), static, stripped, the agent's
// build tags.
func buildLikeAgent(pkg, out string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-tags", "netgo,osusergo,seccomp",
		"-ldflags", "-s -w -linkmode external -extldflags -static", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("unable to build %s: %v: %s", pkg, err, b)
	}
	return nil
}

// checkBuiltLikeAgent fails unless bin is a static, stripped ELF binary,
// as buildLikeAgent and `make agent` make: a dynamic or unstripped one
// starts slower (the loader, a larger image), which would weigh on the
// agent's side of the init-start comparison only.
func checkBuiltLikeAgent(bin string) error {
	f, err := elf.Open(bin)
	if err != nil {
		return fmt.Errorf("unable to read %s as ELF: %w", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked (build it with make agent)", bin)
		}
	}
	if f.Section(".symtab") != nil {
		return fmt.Errorf("%s is not stripped (build it with make agent)", bin)
	}
	return nil
}

// sliminitBinary builds testdata/sliminit like `make agent` builds the agent.
func sliminitBinary(tb testing.TB) string {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "sliminit")
	if err := buildLikeAgent("./testdata/sliminit", bin); err != nil {
		tb.Fatal(err)
	}
	return bin
}

// startInit starts bin as libcontainer starts a container init and runs it
// up to where libcontainer's Go init reads its configuration: `bin init`
// with the environment and descriptors libcontainer 1.5 passes (init pipe,
// sync socket, log pipe, init type), and on the init pipe a real bootstrap
// message (netlink, built from libcontainer's exported attribute types)
// asking nsexec for no new namespaces. nsexec (C, before the Go runtime)
// then runs its three stages as for any container, stage 0 forwards the
// stage pids on the init pipe, and stage 2 starts the Go runtime, runs
// every package's initialisation and enters libcontainer.Init, which finds
// the init pipe closed where the configuration should follow and reports
// that on the sync socket. startInit returns when every stage has exited
// and been waited, with what the three stages used, and checks that the
// report came, so the run provably got as far as libcontainer.Init's
// configuration read.
func startInit(bin string, extraEnv ...string) (initUsage, error) {
	var use initUsage
	err := startInitUsage(bin, &use, extraEnv, initStartTimeout)
	return use, err
}

// initStartTimeout bounds one startInit: the bootstrap's exchange on the
// init pipe and the sync socket's report. Generous (a start takes
// milliseconds, even on a loaded machine): it turns an init that stopped
// short of libcontainer into a failure instead of a hang.
const initStartTimeout = 2 * time.Minute

// initUsage is what the three processes of one init start used, from
// their rusage: page faults (under TCG each costs a trip through the
// guest kernel, and on a DAX root every 4 KiB of the binary the init
// touches faults on its own) and CPU time; Stages is how many of them were
// reaped (startInit fails unless all three were, so that the figures never
// count some stages only).
type initUsage struct {
	Faults int64
	CPU    time.Duration
	Stages int
}

func (u *initUsage) add(r *unix.Rusage) {
	u.Faults += r.Minflt + r.Majflt
	u.CPU += time.Duration(r.Utime.Nano() + r.Stime.Nano())
	u.Stages++
}

func startInitUsage(bin string, use *initUsage, extraEnv []string, timeout time.Duration) (err error) {
	deadline := time.Now().Add(timeout)
	initParent, initChild, err := sockPair(unix.SOCK_STREAM)
	if err != nil {
		return err
	}
	defer initParent.Close()
	syncParent, syncChild, err := sockPair(unix.SOCK_SEQPACKET)
	if err != nil {
		initChild.Close()
		return err
	}
	defer syncParent.Close()
	logR, logW, err := os.Pipe()
	if err != nil {
		initChild.Close()
		syncChild.Close()
		return err
	}
	defer logR.Close()
	for _, f := range []*os.File{initParent, syncParent} {
		if err := f.SetDeadline(deadline); err != nil {
			initChild.Close()
			syncChild.Close()
			logW.Close()
			return fmt.Errorf("unable to bound the init's sockets: %w", err)
		}
	}

	cmd := exec.Command(bin, "init")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// Stages 1 and 2 inherit the output pipe: were one left running after
	// a failure before its pid arrived, cmd.Wait would wait for it.
	cmd.WaitDelay = time.Until(deadline) + time.Second
	cmd.ExtraFiles = []*os.File{initChild, syncChild, logW}
	cmd.Env = append([]string{
		"GOMAXPROCS=1", // the agent's, which libcontainer passes on (agent/container/initenv.go)
		"_LIBCONTAINER_INITPIPE=3",
		"_LIBCONTAINER_SYNCPIPE=4",
		"_LIBCONTAINER_LOGPIPE=5",
		"_LIBCONTAINER_LOGLEVEL=" + strconv.Itoa(int(logrus.InfoLevel)),
		"_LIBCONTAINER_INITTYPE=setns",
	}, extraEnv...)
	msg := nl.NewNetlinkRequest(int(libcontainer.InitMsg), 0)
	msg.AddData(&libcontainer.Int32msg{Type: libcontainer.CloneFlagsAttr, Value: 0})
	err = cmd.Start()
	initChild.Close()
	syncChild.Close()
	logW.Close()
	if err != nil {
		return err
	}
	// nsexec's stages 1 and 2 are our children too (CLONE_PARENT), reaped
	// below by pid; cmd.Wait waits stage 0. On a failure every stage still
	// running is killed first, so that no wait hangs.
	stage0 := make(chan error, 1)
	go func() { stage0 <- cmd.Wait() }()
	go io.Copy(io.Discard, logR)
	var stages []int
	defer func() {
		if err != nil {
			_ = cmd.Process.Kill()
			for _, pid := range stages {
				killChild(pid)
			}
		}
		werr := <-stage0
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			use.Faults += ru.Minflt + ru.Majflt
			use.CPU += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			use.Stages++
		}
		for _, pid := range stages {
			var ru unix.Rusage
			_, rerr := unix.Wait4(pid, nil, 0, &ru)
			for rerr == unix.EINTR {
				_, rerr = unix.Wait4(pid, nil, 0, &ru)
			}
			if rerr == nil {
				use.add(&ru)
			} else if err == nil {
				err = fmt.Errorf("%s init: unable to reap nsexec's stage pid %d: %w", bin, pid, rerr)
			}
		}
		switch {
		case err != nil:
		case werr != nil:
			err = fmt.Errorf("%s init: nsexec stage 0: %v; output %q", bin, werr, out.String())
		case use.Stages < 3:
			err = fmt.Errorf("%s init: %d of nsexec's 3 stages reaped: the usage would count some only", bin, use.Stages)
		}
	}()
	if _, err := initParent.Write(msg.Serialize()); err != nil {
		return fmt.Errorf("unable to send the bootstrap message: %w", err)
	}
	// nsexec's stage 0 answers with the stage pids, then the init pipe
	// carries nothing more: closing our end here is what the Go init
	// finds where its configuration should be.
	line, err := bufio.NewReader(initParent).ReadBytes('\n')
	var pids struct {
		Stage1 int `json:"stage1_pid"`
		Stage2 int `json:"stage2_pid"`
	}
	if err == nil {
		err = json.Unmarshal(line, &pids)
	}
	if err != nil || pids.Stage1 <= 0 || pids.Stage2 <= 0 {
		return fmt.Errorf("%s init: no stage pids from nsexec (%q, %v); output %q", bin, line, err, out.String())
	}
	stages = []int{pids.Stage1, pids.Stage2}
	initParent.Close()
	var report []byte
	buf := make([]byte, 4096)
	for {
		n, rerr := syncParent.Read(buf)
		if n > 0 {
			report = append(report, buf[:n]...)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("%s init: waiting for libcontainer.Init's report: %w; sync %q, output %q", bin, rerr, report, out.String())
		}
	}
	// procError carries the configuration decoder's error: EOF.
	if !bytes.Contains(report, []byte(`"procError"`)) || !bytes.Contains(report, []byte("EOF")) {
		return fmt.Errorf("%s init: did not reach libcontainer.Init's configuration read: sync %q, output %q", bin, report, out.String())
	}
	return nil
}

// killChild SIGKILLs pid if it is a child of this process not yet reaped
// (nsexec's stages are, by CLONE_PARENT): a pid read from the init must
// never aim a signal elsewhere.
func killChild(pid int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return
	}
	// pid (comm) state ppid ...: comm may hold spaces, so after the last ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) > 1 && f[1] == strconv.Itoa(os.Getpid()) {
		_ = unix.Kill(pid, unix.SIGKILL)
	}
}

// sockPair is a close-on-exec AF_UNIX socket pair of type typ, as
// libcontainer makes its init pipe (stream) and sync socket (seqpacket).
// The parent's end is non-blocking, so that it takes deadlines.
func sockPair(typ int) (parent, child *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("unable to create a socket pair: %w", err)
	}
	if err := unix.SetNonblock(fds[1], true); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, nil, fmt.Errorf("unable to make a socket non-blocking: %w", err)
	}
	return os.NewFile(uintptr(fds[1]), "parent"), os.NewFile(uintptr(fds[0]), "child"), nil
}

// benchInitStart times startInit of bin and reports, per start, the page
// faults and CPU time of the init's three processes.
func benchInitStart(b *testing.B, bin string) {
	var total initUsage
	n := 0
	for b.Loop() {
		use, err := startInit(bin)
		if err != nil {
			b.Fatal(err)
		}
		total.Faults += use.Faults
		total.CPU += use.CPU
		n++
	}
	b.ReportMetric(float64(total.Faults)/float64(n), "faults/op")
	b.ReportMetric(float64(total.CPU.Microseconds())/1000/float64(n), "cpu-ms/op")
}

// BenchmarkAgentInitStart: the start of the keel-agent binary as a
// container init (startInit: exec, nsexec's stages, Go runtime, package
// initialisation, libcontainer.Init up to its configuration read). The
// binary must be built as BenchmarkSlimInitStart's (static, stripped):
// $KEEL_AGENT_BIN if it is one, else the agent built here (agentBinary);
// a $KEEL_AGENT_BIN that is not is skipped, saying why (make bench shows
// skips and their reasons).
func BenchmarkAgentInitStart(b *testing.B) {
	bin := agentBinary(b)
	if err := checkBuiltLikeAgent(bin); err != nil {
		b.Skipf("the comparison with BenchmarkSlimInitStart needs the agent built like it: %v", err)
	}
	benchInitStart(b, bin)
}

// BenchmarkSlimInitStart: the same for a libcontainer-only static binary.
func BenchmarkSlimInitStart(b *testing.B) { benchInitStart(b, sliminitBinary(b)) }

// TestInitStartReachesLibcontainer: startInit really takes both binaries
// through nsexec into libcontainer.Init (it fails otherwise).
func TestInitStartReachesLibcontainer(t *testing.T) {
	containertest.SkipUnlessRoot(t, "container init start")
	for name, bin := range map[string]string{"keel-agent": agentBinary(t), "sliminit": sliminitBinary(t)} {
		use, err := startInit(bin)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		// Three processes ran and were waited (startInit fails
		// otherwise): the Go runtime alone faults in hundreds of pages.
		if use.Stages != 3 || use.Faults < 100 || use.CPU <= 0 {
			t.Errorf("%s: usage %+v: the init's stages were not all waited", name, use)
		}
	}
}

// TestInitStartFailsShort: startInit fails, promptly, when the init stops
// short of libcontainer: one that never answers on the init pipe (the
// deadline, not a hang), one that never reports on the sync socket, and
// one whose stage pids cannot be reaped (a report alone would count stage
// 0's usage only).
func TestInitStartFailsShort(t *testing.T) {
	dir := t.TempDir()
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// fds 3, 4: the init pipe and the sync socket.
	pids := `printf '{"stage1_pid":%d,"stage2_pid":%d}\n' `
	for _, c := range []struct {
		name, body, want string
	}{
		{"silent", "exec sleep 600", "no stage pids"},
		{"no report", pids + "$$ $$ >&3; exec sleep 600", "libcontainer.Init's report"},
		{"stages not ours", pids + `99999999 99999998 >&3; printf '{"type":"procError","error":"EOF"}' >&4`, "unable to reap"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t0 := time.Now()
			var use initUsage
			err := startInitUsage(script(strings.ReplaceAll(c.name, " ", "-"), c.body), &use, nil, 2*time.Second)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("startInit: %v, want an error about %q", err, c.want)
			}
			if d := time.Since(t0); d > time.Minute {
				t.Errorf("startInit took %v to fail with a 2 s timeout", d)
			}
			t.Log(err)
		})
	}
}
