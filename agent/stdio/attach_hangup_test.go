package stdio

import (
	"errors"
	"io"
	"net"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// hangupDeadline bounds how long a writer may stay blocked after the host
// dropped its attached stream (generous for a loaded machine; the old code
// blocked it forever).
const hangupDeadline = 20 * time.Second

// A host that closes an attached stdout mid-stream releases the process:
// the agent drops its read end of the pipe, so a real writer (dd, 64 MiB,
// far more than the pipe and socket hold) dies of SIGPIPE instead of
// blocking forever on a full pipe. Through splice(2) and the copy loop.
func TestAttachHostCloseBreaksPipe(t *testing.T) {
	for _, tc := range []struct {
		name string
		wrap bool
	}{{"splice", false}, {"copy", true}} {
		t.Run(tc.name, func(t *testing.T) {
			s := newIO(t, Options{})
			agent, host := unixPair(t)
			var conn net.Conn = agent
			if tc.wrap {
				conn = plainConn{agent}
			}
			p := start(t, s, "dd", "if=/dev/zero", "bs=64k", "count=1000")
			if err := s.AttachStdout(conn); err != nil {
				t.Fatal(err)
			}
			readThenClose(t, host)
			st := waitExit(t, p)
			if !st.Signaled() || st.Signal() != syscall.SIGPIPE {
				t.Fatalf("dd ended with %v, want death by SIGPIPE", p.status)
			}
		})
	}
}

// The same for a terminal: the attached stream is the pty master, and
// dropping it hangs the terminal up, so a process writing to the slave is
// released (SIGHUP as the session leader, or EIO) rather than blocked.
func TestAttachHostCloseHangsUpTerminal(t *testing.T) {
	s := newIO(t, Options{Terminal: true})
	agent, host := unixPair(t)
	p := startTTY(t, s, "dd", "if=/dev/zero", "bs=64k", "count=1000")
	if err := s.AttachStdout(agent); err != nil {
		t.Fatal(err)
	}
	readThenClose(t, host)
	waitExit(t, p)
	if p.status == nil {
		t.Fatal("dd wrote 64 MiB to a terminal whose output was dropped")
	}
}

// readThenClose reads 100 KiB of the stream as the host, then closes it.
func readThenClose(t *testing.T, host net.Conn) {
	t.Helper()
	host.SetReadDeadline(time.Now().Add(hangupDeadline))
	if _, err := io.ReadFull(host, make([]byte, 100<<10)); err != nil {
		t.Fatalf("host read: %v", err)
	}
	host.Close()
}

// waitExit waits up to hangupDeadline for p to end and returns its status.
func waitExit(t *testing.T, p *proc) syscall.WaitStatus {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(hangupDeadline):
		t.Fatalf("the writer is still blocked %v after the host closed its stream", hangupDeadline)
	}
	var ee *exec.ExitError
	if !errors.As(p.status, &ee) {
		return 0
	}
	return ee.Sys().(syscall.WaitStatus)
}
