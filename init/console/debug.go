package console

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/keelvm/keel/init/reaper"
	"golang.org/x/sys/unix"
)

// Shells are tried in order by FindShell (Kata: bash, then sh).
var Shells = []string{"/bin/bash", "/bin/sh", "/usr/bin/bash", "/usr/bin/sh", "/bin/busybox"}

// FindShell returns the first executable shell, or "".
func FindShell() string {
	for _, s := range Shells {
		if fi, err := os.Stat(s); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return s
		}
	}
	return ""
}

// DebugConsole serves a shell per connection on ln until ln is closed.
// shell "" means FindShell. Each session is logged with its exit status.
func DebugConsole(ln net.Listener, shell string, log *slog.Logger) error {
	if shell == "" {
		shell = FindShell()
	}
	if shell == "" {
		ln.Close()
		return errors.New("debug console: no shell found in " + fmt.Sprint(Shells))
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			st, err := session(conn, shell)
			if err != nil {
				log.Warn("debug console session failed", "err", err)
				return
			}
			log.Info("debug console session ended", "status", st.String())
		}()
	}
}

func shellCmd(shell string) *exec.Cmd {
	args := []string{shell}
	if shell == "/bin/busybox" {
		args = []string{shell, "sh"}
	}
	cmd := &exec.Cmd{Path: shell, Args: args}
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/", "TERM=vt100"}
	cmd.Dir = "/"
	return cmd
}

// session runs one shell for conn, on a pty when possible.
func session(conn net.Conn, shell string) (reaper.ExitStatus, error) {
	cmd := shellCmd(shell)
	master, slave, err := openPTY()
	if err != nil {
		// Pipes: no job control, but a working shell.
		cmd.Stdin, cmd.Stdout, cmd.Stderr = conn, conn, conn
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		return reaper.Command(cmd)
	}
	defer master.Close()
	defer slave.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	go func() { _, _ = io.Copy(master, conn) }()
	var exited atomic.Bool
	outDone := make(chan struct{})
	go func() {
		// Copy until the shell exited and its output is drained: we hold
		// the slave open, so the master never reports EIO and no output
		// still in the tty buffers is lost.
		defer close(outDone)
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			if n > 0 {
				if _, werr := conn.Write(buf[:n]); werr != nil {
					return
				}
				if exited.Load() {
					_ = master.SetReadDeadline(time.Now().Add(drainQuiet))
				}
			}
			if err != nil && !(errors.Is(err, os.ErrDeadlineExceeded) && !exited.Load()) {
				return
			}
		}
	}()
	st, err := reaper.Command(cmd)
	exited.Store(true)
	_ = master.SetReadDeadline(time.Now().Add(drainQuiet))
	<-outDone
	return st, err
}

// drainQuiet is how long the session waits for more output after the
// shell exited.
const drainQuiet = 100 * time.Millisecond

// openPTY opens a pty pair from /dev/ptmx.
func openPTY() (master, slave *os.File, err error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	// Use the raw conn, not Fd(): Fd() would switch the master to blocking
	// mode and break read deadlines.
	rc, err := m.SyscallConn()
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	var n int
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		var unlock int32
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
			ierr = e
			return
		}
		n, ierr = unix.IoctlGetInt(int(fd), unix.TIOCGPTN)
	}); err != nil || ierr != nil {
		m.Close()
		return nil, nil, errors.Join(err, ierr)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	return m, s, nil
}
