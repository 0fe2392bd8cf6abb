package stdio

import (
	"context"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// maxConsoleName bounds the payload libcontainer sends with the master (the
// pty's file name, see runc's cmsg.SendFile).
const maxConsoleName = 4096

// initConsole creates the socket pair whose child end libcontainer's init
// uses to send back the pty master it created inside the container.
func (s *IO) initConsole() error {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		close(s.consoleReady)
		return fmt.Errorf("unable to create console socket pair: %w", err)
	}
	s.consoleChild = os.NewFile(uintptr(fds[1]), "console-socket")
	parent := os.NewFile(uintptr(fds[0]), "console-parent")
	c, err := net.FileConn(parent) // dups: the poller-managed copy lives on
	parent.Close()
	if err != nil {
		close(s.consoleReady)
		return fmt.Errorf("unable to wrap console socket: %w", err)
	}
	s.consoleParent = c.(*net.UnixConn)
	go s.receiveConsole()
	return nil
}

// receiveConsole waits for the master; it ends early when Close closes the
// socket or when every holder of the child end (the agent after
// CloseChildSide, libcontainer's init) closed it without sending.
func (s *IO) receiveConsole() {
	defer close(s.consoleReady)
	master, err := recvFd(s.consoleParent)
	s.consoleParent.Close()
	if err != nil {
		s.consoleErr = fmt.Errorf("%w: %v", ErrNoConsole, err)
		return
	}
	// Under the exit lock: ProcessExited may run concurrently and reads
	// the streams under it.
	s.exit.mu.Lock()
	defer s.exit.mu.Unlock()
	s.master = master
	s.stdout = &outStream{name: "stdout", f: master, exit: &s.exit}
	s.stdin = &inStream{f: master, exit: &s.exit}
	if s.exit.exited {
		master.SetDeadline(s.exit.graceEnd)
	}
}

// recvFd receives one descriptor sent with SCM_RIGHTS and returns it as a
// non-blocking, poller-managed file.
func recvFd(c *net.UnixConn) (*os.File, error) {
	name := make([]byte, maxConsoleName)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := c.ReadMsgUnix(name, oob)
	if err != nil {
		return nil, err
	}
	if oobn == 0 {
		return nil, fmt.Errorf("no descriptor in console message (%d bytes)", n)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return nil, err
	}
	var fds []int
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err == nil {
			fds = append(fds, got...)
		}
	}
	if len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("expected 1 descriptor, got %d", len(fds))
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		return nil, err
	}
	return os.NewFile(uintptr(fds[0]), string(name[:n])), nil
}

// ReceiveConsole waits until the pty master arrived, ctx is done, or the
// process failed to send it. Optional: every terminal operation waits
// itself; call it after libcontainer's Start to surface a failure early.
func (s *IO) ReceiveConsole(ctx context.Context) error { return s.waitConsole(ctx) }

func (s *IO) waitConsole(ctx context.Context) error {
	select {
	case <-s.consoleReady:
		return s.consoleErr
	case <-ctx.Done():
		return ctx.Err()
	}
}
