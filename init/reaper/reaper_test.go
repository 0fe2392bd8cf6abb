package reaper

import (
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	if err := Start(); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}

// children lists this process's children as "pid state".
func children(t *testing.T) []string {
	t.Helper()
	self := strconv.Itoa(os.Getpid())
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) > 1 && f[1] == self {
			out = append(out, e.Name()+" "+f[0])
		}
	}
	return out
}

func waitNoChildren(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if len(children(t)) == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("children left (zombies?): %v", children(t))
}

func TestCommandStatusAndOutput(t *testing.T) {
	for _, tc := range []struct {
		script string
		code   int
		sig    unix.Signal
	}{
		{"echo hi", 0, 0},
		{"echo hi; exit 3", 3, 0},
		{"echo hi; kill -9 $$", 137, unix.SIGKILL},
		{"echo hi; kill -15 $$", 143, unix.SIGTERM},
	} {
		var out bytes.Buffer
		cmd := exec.Command("/bin/sh", "-c", tc.script)
		cmd.Stdout = &out
		st, err := Command(cmd)
		if err != nil {
			t.Fatalf("%q: %v", tc.script, err)
		}
		if st.Code != tc.code || st.Signal != tc.sig || st.Pid != cmd.Process.Pid {
			t.Errorf("%q: got %+v, want code %d signal %v", tc.script, st, tc.code, tc.sig)
		}
		if out.String() != "hi\n" {
			t.Errorf("%q: stdout %q", tc.script, out.String())
		}
	}
	if _, err := Command(exec.Command("/nonexistent/binary")); err == nil {
		t.Error("starting a missing binary: want an error")
	}
	waitNoChildren(t)
}

func TestOrphansReaped(t *testing.T) {
	before := Reaped()
	// Each shell leaves 5 background children that are re-parented to us.
	for range 4 {
		st, err := Command(exec.Command("/bin/sh", "-c", "for i in 1 2 3 4 5; do sleep 0.05 & done; exit 0"))
		if err != nil || st.Code != 0 {
			t.Fatalf("%+v %v", st, err)
		}
	}
	waitNoChildren(t)
	if n := Reaped() - before; n < 24 {
		t.Errorf("reaped %d processes, want >= 24", n)
	}
}

func TestRegisterExactlyOnce(t *testing.T) {
	// Start under Lock and register before Unlock (the libcontainer path).
	Lock()
	cmd := exec.Command("/bin/sh", "-c", "exit 7")
	if err := cmd.Start(); err != nil {
		Unlock()
		t.Fatal(err)
	}
	ch := Register(cmd.Process.Pid)
	Unlock()
	select {
	case st := <-ch:
		if st.Code != 7 {
			t.Errorf("got %+v", st)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no status")
	}
	select {
	case st, ok := <-ch:
		t.Fatalf("second delivery %+v %v", st, ok)
	case <-time.After(100 * time.Millisecond):
	}
	_ = cmd.Wait()
}

func TestRegisterAfterExit(t *testing.T) {
	// Register after the loop reaped the pid: the status is kept.
	Lock()
	cmd := exec.Command("/bin/sh", "-c", "exit 5")
	if err := cmd.Start(); err != nil {
		Unlock()
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	Unlock()
	waitNoChildren(t)
	select {
	case st := <-Register(pid):
		if st.Code != 5 || st.Pid != pid {
			t.Errorf("got %+v", st)
		}
	case <-time.After(time.Second):
		t.Fatal("early status lost")
	}
	_ = cmd.Wait()
}

func TestLockKeepsChildForCaller(t *testing.T) {
	// While Lock is held the caller's own wait(2) must win.
	Lock()
	cmd := exec.Command("/bin/sh", "-c", "exit 2")
	if err := cmd.Start(); err != nil {
		Unlock()
		t.Fatal(err)
	}
	err := cmd.Wait()
	Unlock()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 2 {
		t.Fatalf("caller lost its child: %v", err)
	}
}

func TestEarlyBounded(t *testing.T) {
	r.mu.Lock()
	n := len(r.early)
	r.mu.Unlock()
	if n > MaxEarly {
		t.Fatalf("early map has %d entries", n)
	}
	for i := range MaxEarly + 10 {
		r.deliver(ExitStatus{Pid: 1<<30 + i})
	}
	r.mu.Lock()
	n = len(r.early)
	r.mu.Unlock()
	if n > MaxEarly {
		t.Fatalf("early map grew to %d", n)
	}
}

func TestRegisterSinceDropsStaleStatus(t *testing.T) {
	// An orphan's status kept for pid P must not be delivered to a newer
	// process that reuses P.
	const pid = 1<<30 - 7
	r.deliver(ExitStatus{Pid: pid, Code: 42})
	time.Sleep(time.Millisecond)
	ch := RegisterSince(pid, time.Now())
	select {
	case st := <-ch:
		t.Fatalf("stale status delivered: %+v", st)
	default:
	}
	r.deliver(ExitStatus{Pid: pid, Code: 1})
	if st := <-ch; st.Code != 1 {
		t.Fatalf("got %+v", st)
	}
	// Without a start time the kept status is delivered.
	r.deliver(ExitStatus{Pid: pid, Code: 9})
	if st := <-Register(pid); st.Code != 9 {
		t.Fatalf("got %+v", st)
	}
}
