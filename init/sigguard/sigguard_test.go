package sigguard

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary doubles as the guarded process: with this variable set it
// holds the signals, reports the SigIgn an exec'd child starts with, and
// waits to be signalled.
const childEnv = "KEEL_SIGGUARD_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "control" {
		select {} // unguarded: the control dies of SIGHUP
	}
	if os.Getenv(childEnv) == "selfkill" {
		// Control of TestArm64HandlerUnderQEMU: no handler for signal
		// 34, so sending it to ourselves must kill us.
		_ = unix.Kill(unix.Getpid(), unix.Signal(34))
		time.Sleep(10 * time.Second)
		fmt.Println("survived signal 34 without a handler")
		os.Exit(0)
	}
	if os.Getenv(childEnv) == "fatal" {
		HoldSignals(Fatal()...)
		fmt.Println("ready")
		select {}
	}
	if os.Getenv(childEnv) == "1" {
		Hold()
		out, err := exec.Command("/bin/sh", "-c", "grep SigIgn /proc/self/status").Output()
		if err != nil {
			fmt.Println("exec failed:", err)
			os.Exit(1)
		}
		fmt.Printf("child %s", out)
		fmt.Println("ready")
		select {}
	}
	os.Exit(m.Run())
}

func procStatus(t *testing.T, pid int, field string) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in status", field)
	return 0
}

func state(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "gone"
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])[0]
}

// TestEveryHeldSignalSurvived sends every signal of Held to a process that
// called Hold: it neither dies nor stops, catches them with handlers (not
// SIG_IGN), and a program it execs starts with no signal ignored.
// startChild runs this test binary as a child in mode (see TestMain) and
// returns its pid once it printed "ready", with the lines it printed up to
// and including that one. The child is killed and waited for when t ends.
func startChild(t *testing.T, mode string) (int, []string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	sc := bufio.NewScanner(out)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if sc.Text() == "ready" {
			break
		}
	}
	if len(lines) == 0 || lines[len(lines)-1] != "ready" {
		t.Fatalf("child did not get ready: %q", lines)
	}
	go func() {
		for sc.Scan() {
		}
	}()
	return cmd.Process.Pid, lines
}

func TestEveryHeldSignalSurvived(t *testing.T) {
	pid, lines := startChild(t, "1")
	if len(lines) < 2 {
		t.Fatalf("child printed nothing before ready: %q", lines)
	}
	if got := strings.Fields(lines[0]); len(got) != 3 || got[2] != "0000000000000000" {
		t.Errorf("a program exec'd by the guarded process starts with ignored signals: %q", lines[0])
	}
	if ign := procStatus(t, pid, "SigIgn"); ign != 0 {
		t.Errorf("guarded process has SigIgn %#x: ignored dispositions would be inherited", ign)
	}
	cgt := procStatus(t, pid, "SigCgt")
	for _, s := range Held() {
		n := int(s.(unix.Signal))
		if cgt&(1<<(n-1)) == 0 {
			t.Errorf("signal %d (%v) has no handler", n, s)
		}
	}
	for _, s := range Held() {
		sig := s.(unix.Signal)
		if err := unix.Kill(pid, sig); err != nil {
			t.Fatalf("kill %v: %v", sig, err)
		}
		time.Sleep(20 * time.Millisecond)
		if st := state(pid); st != "S" && st != "R" {
			t.Fatalf("after %v (%d) the guarded process is %q", sig, int(sig), st)
		}
	}
	// Control: an unguarded Go process dies of the first of them.
	unguardedDiesOf(t, unix.SIGHUP)
}

// unguardedDiesOf is the control of the signal tests: an unguarded Go
// process (this test binary, holding nothing) must die of sig within 10 s,
// or the test would prove nothing.
func unguardedDiesOf(t *testing.T, sig unix.Signal) {
	t.Helper()
	ctl := exec.Command(os.Args[0])
	ctl.Env = append(os.Environ(), childEnv+"=control")
	if err := ctl.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	_ = ctl.Process.Signal(sig)
	done := make(chan error, 1)
	go func() { done <- ctl.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = ctl.Process.Kill()
		<-done
		t.Fatalf("control: an unguarded Go process survived signal %d (the test would prove nothing)", int(sig))
	}
}

// TestRealtimeSurvivedBeforeHeld: a process that held only Fatal (PID 1
// until init/boot holds Realtime after the agent listens) survives every
// real-time signal 35 to 64, which the Go runtime drops by itself.
func TestRealtimeSurvivedBeforeHeld(t *testing.T) {
	pid, _ := startChild(t, "fatal")
	if len(Realtime()) != 30 {
		t.Fatalf("Realtime() has %d signals, want 35..64", len(Realtime()))
	}
	for _, s := range Realtime() {
		sig := s.(unix.Signal)
		if err := unix.Kill(pid, sig); err != nil {
			t.Fatalf("kill %v: %v", sig, err)
		}
		time.Sleep(20 * time.Millisecond)
		if st := state(pid); st != "S" && st != "R" {
			t.Fatalf("after signal %d the process holding only Fatal is %q", int(sig), st)
		}
	}
}

// TestReservedSignalsCaught: signals 32 to 34, which the Go runtime leaves
// SIG_DFL (terminate), get a handler from HoldSignals, so they cannot end
// the process, not even through the kernel's race that lets a SIG_DFL
// signal kill PID 1 (see catchReserved); an ignored disposition is not
// used instead. The control, an unguarded Go process, dies of signal 34.
func TestReservedSignalsCaught(t *testing.T) {
	pid, _ := startChild(t, "fatal")
	cgt, ign := procStatus(t, pid, "SigCgt"), procStatus(t, pid, "SigIgn")
	for sig := 32; sig <= 34; sig++ {
		if cgt&(1<<(sig-1)) == 0 {
			t.Errorf("signal %d has no handler (SigCgt %#x)", sig, cgt)
		}
		if ign&(1<<(sig-1)) != 0 {
			t.Errorf("signal %d is ignored (SigIgn %#x): containers would inherit that", sig, ign)
		}
	}
	for sig := 32; sig <= 34; sig++ {
		for range 3 {
			if err := unix.Kill(pid, unix.Signal(sig)); err != nil {
				t.Fatalf("kill %d: %v", sig, err)
			}
		}
		time.Sleep(20 * time.Millisecond)
		if st := state(pid); st != "S" && st != "R" {
			t.Fatalf("after signal %d the guarded process is %q", sig, st)
		}
	}
	unguardedDiesOf(t, unix.Signal(34))
}
