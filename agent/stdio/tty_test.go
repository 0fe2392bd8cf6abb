package stdio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startTTY plays libcontainer's part for a terminal process: it creates a
// pty, runs the command on the slave as its controlling terminal, and sends
// the master over the console socket as runc's init does.
func startTTY(t *testing.T, s *IO, name string, args ...string) *proc {
	t.Helper()
	mfd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	master := os.NewFile(uintptr(mfd), "ptmx")
	defer master.Close()
	if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(mfd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	slave, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	sock := s.ConsoleSocket()
	if sock == nil {
		t.Fatal("no console socket")
	}
	if err := unix.Sendmsg(int(sock.Fd()), []byte(master.Name()), unix.UnixRights(mfd), nil, 0); err != nil {
		t.Fatal(err)
	}
	s.CloseChildSide()
	p := &proc{cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.status = cmd.Wait()
		s.ProcessExited()
		close(p.exited)
	}()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	})
	return p
}

// readUntil reads stdout until it contains want or ctx ends.
func readUntil(ctx context.Context, s *IO, want string) (string, error) {
	var sb strings.Builder
	for !strings.Contains(sb.String(), want) {
		b, err := s.ReadStdout(ctx, 1024)
		if err != nil {
			return sb.String(), err
		}
		sb.Write(b)
	}
	return sb.String(), nil
}

func TestTTYResize(t *testing.T) {
	s := newIO(t, Options{Terminal: true})
	if in, out, errf := s.ChildFiles(); in != nil || out != nil || errf != nil {
		t.Fatal("terminal IO must not offer pipes")
	}
	startTTY(t, s, "sh", "-c", "stty -echo; echo ready; read x; stty size")
	ctx := ctxT(t, 10*time.Second)
	if err := s.ReceiveConsole(ctx); err != nil {
		t.Fatal(err)
	}
	if out, err := readUntil(ctx, s, "ready"); err != nil {
		t.Fatalf("%q: %v", out, err)
	}
	if err := s.Resize(40, 100); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(ctx, []byte("\n")); err != nil {
		t.Fatal(err)
	}
	if out, err := readUntil(ctx, s, "40 100"); err != nil {
		t.Fatalf("stty size printed %q: %v", out, err)
	}
	if err := s.Resize(1<<16, 1); err == nil {
		t.Fatal("rows above 65535 accepted")
	}
	if b, err := s.ReadStderr(ctx, 10); !errors.Is(err, io.EOF) {
		t.Fatalf("terminal stderr: %q, %v; want EOF", b, err)
	}
}

func TestTTYCloseStdinSendsEOFAndOutputEnds(t *testing.T) {
	base := fdCount(t)
	s := newIO(t, Options{Terminal: true})
	p := startTTY(t, s, "cat")
	ctx := ctxT(t, 10*time.Second)
	if _, err := s.Write(ctx, []byte("abc\n")); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		t.Fatal("cat did not see ^D")
	}
	out, err := readAll(ctx, s.ReadStdout, 1024, 0)
	if err != nil || !strings.Contains(string(out), "abc") {
		t.Fatalf("output %q, %v", out, err)
	}
	s.Close()
	checkFds(t, base)
}

func TestTTYConsoleNeverSent(t *testing.T) {
	base := fdCount(t)
	s, err := New(Options{Terminal: true})
	if err != nil {
		t.Fatal(err)
	}
	s.CloseChildSide() // the process failed before its init sent the master
	if err := s.ReceiveConsole(ctxT(t, 5*time.Second)); !errors.Is(err, ErrNoConsole) {
		t.Fatalf("ReceiveConsole: %v, want ErrNoConsole", err)
	}
	if _, err := s.ReadStdout(context.Background(), 10); !errors.Is(err, ErrNoConsole) {
		t.Fatalf("ReadStdout: %v", err)
	}
	if err := s.Resize(10, 10); !errors.Is(err, ErrNoConsole) {
		t.Fatalf("Resize: %v", err)
	}
	s.Close()
	checkFds(t, base)
}

func TestResizeWithoutTerminal(t *testing.T) {
	s := newIO(t, Options{})
	if err := s.Resize(10, 10); !errors.Is(err, ErrNoStream) {
		t.Fatalf("Resize on pipes: %v", err)
	}
}
