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
	err := startInitUsage(bin, &use, extraEnv)
	return use, err
}

// initUsage is what the three processes of one init start used, from
// their rusage: page faults (under TCG each costs a trip through the
// guest kernel, and on a DAX root every 4 KiB of the binary the init
// touches faults on its own) and CPU time.
type initUsage struct {
	Faults int64
	CPU    time.Duration
}

func (u *initUsage) add(r *unix.Rusage) {
	u.Faults += r.Minflt + r.Majflt
	u.CPU += time.Duration(r.Utime.Nano() + r.Stime.Nano())
}

func startInitUsage(bin string, use *initUsage, extraEnv []string) error {
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

	cmd := exec.Command(bin, "init")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
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
	// nsexec's stages 1 and 2 are our children too (CLONE_PARENT), waited
	// below by pid; cmd.Wait waits stage 0.
	stage0 := make(chan error, 1)
	go func() { stage0 <- cmd.Wait() }()
	go io.Copy(io.Discard, logR)
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
		<-stage0
		return fmt.Errorf("%s init: no stage pids from nsexec (%q, %v); output %q", bin, line, err, out.String())
	}
	initParent.Close()
	defer func() {
		for _, pid := range []int{pids.Stage1, pids.Stage2} {
			var ru unix.Rusage
			if _, err := unix.Wait4(pid, nil, 0, &ru); err == nil {
				use.add(&ru)
			}
		}
	}()
	var report []byte
	buf := make([]byte, 4096)
	for {
		n, err := syncParent.Read(buf)
		if n > 0 {
			report = append(report, buf[:n]...)
		}
		if err != nil {
			break
		}
	}
	if err := <-stage0; err != nil {
		return fmt.Errorf("%s init: nsexec stage 0: %v; output %q", bin, err, out.String())
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		use.Faults += ru.Minflt + ru.Majflt
		use.CPU += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	// procError carries the configuration decoder's error: EOF.
	if !bytes.Contains(report, []byte(`"procError"`)) || !bytes.Contains(report, []byte("EOF")) {
		return fmt.Errorf("%s init: did not reach libcontainer.Init's configuration read: sync %q, output %q", bin, report, out.String())
	}
	return nil
}

// sockPair is a close-on-exec AF_UNIX socket pair of type typ, as
// libcontainer makes its init pipe (stream) and sync socket (seqpacket).
func sockPair(typ int) (parent, child *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("unable to create a socket pair: %w", err)
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
		// Three processes ran and were waited: the Go runtime alone
		// faults in hundreds of pages.
		if use.Faults < 100 || use.CPU <= 0 {
			t.Errorf("%s: usage %+v: the init's stages were not all waited", name, use)
		}
	}
}
