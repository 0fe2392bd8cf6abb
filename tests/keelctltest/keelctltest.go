// Package keelctltest drives the real keelctl binary against an agent and
// checks what a person relies on: exit status, stdout/stderr separation,
// stdin, a terminal that follows resizes and ends with ^D, exec, kill,
// stats and rm with readable errors. The same checks run against the
// host-mode agent (cmd/keelctl) and a guest (tests/demo).
package keelctltest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/container/containertest"
	"golang.org/x/sys/unix"
)

// Binary returns $KEELCTL_BIN, or builds keelctl into dir.
func Binary(t testing.TB, dir string) string {
	t.Helper()
	if p := os.Getenv("KEELCTL_BIN"); p != "" {
		return p
	}
	p := filepath.Join(dir, "keelctl")
	out, err := exec.Command("go", "build", "-o", p, "github.com/keelvm/keel/cmd/keelctl").CombinedOutput()
	if err != nil {
		t.Fatalf("building keelctl: %v\n%s", err, out)
	}
	return p
}

// Result is one keelctl run.
type Result struct {
	Code           int
	Stdout, Stderr string
}

// Run runs keelctl --addr addr --timeout timeout ARGS with stdin (so
// connecting and setting up get timeout), waiting at most twice that.
func Run(t testing.TB, bin, addr string, stdin string, timeout time.Duration, args ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--addr", addr, "--timeout", timeout.String()}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := Result{Stdout: out.String(), Stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.Code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("keelctl %v: %v", args, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("keelctl %v did not finish in %v; stdout %q stderr %q", args, 2*timeout, r.Stdout, r.Stderr)
	}
	t.Logf("keelctl %s -> exit %d, stdout %q, stderr %q", strings.Join(args, " "), r.Code, headOf(r.Stdout, 300), headOf(r.Stderr, 300))
	return r
}

// Check runs every check against the agent at addr, whose containers can
// use rootfs (a busybox tree as the agent sees it). timeout bounds each
// keelctl command (VMs under TCG are slow).
func Check(t *testing.T, bin, addr, rootfs string, timeout time.Duration) {
	run := func(t *testing.T, stdin string, args ...string) Result {
		t.Helper()
		return Run(t, bin, addr, stdin, timeout, args...)
	}
	t.Run("exit-status-and-streams", func(t *testing.T) {
		r := run(t, "", "run", "--rm", "--rootfs", rootfs, "--", "/bin/sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3")
		if r.Code != 3 || r.Stdout != "to-stdout\n" || r.Stderr != "to-stderr\n" {
			t.Errorf("got exit %d stdout %q stderr %q; want 3, %q, %q", r.Code, r.Stdout, r.Stderr, "to-stdout\n", "to-stderr\n")
		}
	})
	t.Run("stdin", func(t *testing.T) {
		in := strings.Repeat("keel reads stdin\n", 5000) // 85 KB: several WriteStdin calls
		r := run(t, in, "run", "--rm", "--rootfs", rootfs, "--env", "GREETING=hi there", "--", "/bin/sh", "-c", `tr a-z A-Z; echo "$GREETING"`)
		if want := strings.ToUpper(in) + "hi there\n"; r.Code != 0 || r.Stdout != want {
			t.Errorf("exit %d, stdout %d bytes (want %d), tail %q", r.Code, len(r.Stdout), len(want), tailOf(r.Stdout, 40))
		}
	})
	t.Run("tty", func(t *testing.T) { checkTTY(t, bin, addr, rootfs, timeout) })
	t.Run("exec-kill-stats-rm", func(t *testing.T) {
		id := fmt.Sprintf("keelctl-test-%d", time.Now().UnixNano()%1e6)
		ctx, cancel := context.WithTimeout(context.Background(), 3*timeout)
		defer cancel()
		bg := exec.CommandContext(ctx, bin, "--addr", addr, "--timeout", timeout.String(), "run", "--id", id, "--rootfs", rootfs, "--", "/bin/sh", "-c", "echo started; exec sleep 1000")
		var bgOut containertest.LockedBuffer
		bg.Stdout, bg.Stderr = &bgOut, &bgOut
		if err := bg.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- bg.Wait() }()
		deadline := time.Now().Add(timeout)
		for !strings.Contains(bgOut.String(), "started") {
			if time.Now().After(deadline) {
				t.Fatalf("background run printed %q", bgOut.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
		r := run(t, "", "exec", id, "--", "/bin/sh", "-c", "echo exec-out; echo exec-err >&2; cat /proc/1/cmdline | tr '\\0' ' '; exit 5")
		if r.Code != 5 || r.Stdout != "exec-out\nsleep 1000 " || r.Stderr != "exec-err\n" {
			t.Errorf("exec: exit %d stdout %q stderr %q", r.Code, r.Stdout, r.Stderr)
		}
		r = run(t, "", "stats", id)
		if r.Code != 0 || !strings.Contains(r.Stdout, "container  "+id) || !strings.Contains(r.Stdout, "pids       1 ") {
			t.Errorf("stats: exit %d stdout %q", r.Code, r.Stdout)
		}
		r = run(t, "", "stats", "--json", id)
		if r.Code != 0 || !strings.Contains(r.Stdout, `"cgroupStats"`) {
			t.Errorf("stats --json: exit %d stdout %q", r.Code, r.Stdout)
		}
		r = run(t, "", "kill", id, "KILL")
		if r.Code != 0 {
			t.Errorf("kill: exit %d stderr %q", r.Code, r.Stderr)
		}
		select {
		case err := <-done:
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 128+9 {
				t.Errorf("the killed container's keelctl run ended with %v, want exit status 137; output %q", err, bgOut.String())
			}
		case <-ctx.Done():
			t.Fatalf("keelctl run did not return after kill")
		}
		if r := run(t, "", "rm", id); r.Code != 0 {
			t.Errorf("rm: exit %d stderr %q", r.Code, r.Stderr)
		}
		if r := run(t, "", "rm", id); r.Code != 1 || !strings.Contains(r.Stderr, "NotFound") || !strings.Contains(r.Stderr, id) {
			t.Errorf("rm of a removed container: exit %d stderr %q; want 1 and a NotFound naming it", r.Code, r.Stderr)
		}
	})
	t.Run("errors", func(t *testing.T) {
		if r := run(t, "", "run", "--rm", "--", "/bin/true"); r.Code != 2 || !strings.Contains(r.Stderr, "--rootfs") {
			t.Errorf("run without --rootfs: exit %d stderr %q", r.Code, r.Stderr)
		}
		r := run(t, "", "run", "--rm", "--rootfs", "/no/such/rootfs", "--", "/bin/true")
		if r.Code != 125 || !strings.Contains(r.Stderr, "InvalidArgument") || !strings.Contains(r.Stderr, "/no/such/rootfs") {
			t.Errorf("run with a missing rootfs: exit %d stderr %q; want 125 and InvalidArgument naming the path", r.Code, r.Stderr)
		}
		if r := run(t, "", "run", "--rm", "--rootfs", rootfs, "--", "/no/such/cmd"); r.Code == 0 {
			t.Errorf("run of a missing command: exit 0, stderr %q", r.Stderr)
		}
		if r := run(t, "", "kill", "nosuch", "SIGNOPE"); r.Code != 2 || !strings.Contains(r.Stderr, "SIGNOPE") {
			t.Errorf("kill with a bad signal: exit %d stderr %q", r.Code, r.Stderr)
		}
		if r := run(t, "", "exec", "nosuch", "--", "/bin/true"); r.Code != 125 || !strings.Contains(r.Stderr, "NotFound") {
			t.Errorf("exec in a missing container: exit %d stderr %q", r.Code, r.Stderr)
		}
	})
}

// checkTTY runs a shell on a pty the test holds (as a person's terminal):
// the container sees the terminal's size, a resize plus SIGWINCH reaches
// it, typed lines are echoed by the container's pty, and ^D ends the
// shell with keelctl returning its status.
func checkTTY(t *testing.T, bin, addr, rootfs string, timeout time.Duration) {
	master, slave, err := openPTY()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	setSize(t, master, 33, 101)
	ctx, cancel := context.WithTimeout(context.Background(), 3*timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--addr", addr, "--timeout", timeout.String(), "run", "--rm", "--tty", "--rootfs", rootfs, "--",
		"/bin/sh", "-c", `echo "size $(stty size) tty $(tty)"; while read line; do echo "got $line size $(stty size)"; done; exit 4`)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true, Setctty: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	var out containertest.LockedBuffer
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			out.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	waitFor := func(what string) {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for !strings.Contains(out.String(), what) {
			if time.Now().After(deadline) {
				t.Fatalf("terminal never showed %q; it shows %q", what, out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("size 33 101 tty /dev/pts/")
	// Resize the terminal as a window manager would: new size, SIGWINCH
	// to the foreground process (keelctl). The line typed next is read
	// after the resize went out, unless the RPCs raced: retry a few.
	setSize(t, master, 40, 120)
	_ = cmd.Process.Signal(unix.SIGWINCH)
	for i := 0; i < 20 && !strings.Contains(out.String(), "size 40 120"); i++ {
		time.Sleep(200 * time.Millisecond)
		fmt.Fprintf(master, "line%d\r", i)
		time.Sleep(300 * time.Millisecond)
	}
	waitFor("got line")
	waitFor("size 40 120")
	master.Write([]byte{4}) // ^D: the shell's read sees end of file
	err = cmd.Wait()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 4 {
		t.Errorf("keelctl run --tty ended with %v, want exit status 4; terminal: %q", err, out.String())
	}
	if strings.Contains(out.String(), "\x1b") {
		t.Logf("terminal output has escape sequences: %q", out.String())
	}
}

func openPTY() (master, slave *os.File, err error) {
	master, err = os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		master.Close()
		return nil, nil, err
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		master.Close()
		return nil, nil, err
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		return nil, nil, err
	}
	return master, slave, nil
}

func setSize(t *testing.T, f *os.File, rows, cols uint16) {
	t.Helper()
	if err := unix.IoctlSetWinsize(int(f.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
		t.Fatal(err)
	}
}

func tailOf(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func headOf(s string, n int) string {
	if len(s) > n {
		return s[:n] + fmt.Sprintf("... (%d bytes)", len(s))
	}
	return s
}
