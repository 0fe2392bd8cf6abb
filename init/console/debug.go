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
	"syscall"
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
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	go func() { _, _ = io.Copy(master, conn); master.Close() }()
	go func() { _, _ = io.Copy(conn, master); conn.Close() }()
	st, err := reaper.Command(cmd)
	slave.Close()
	return st, err
}

// openPTY opens a pty pair from /dev/ptmx.
func openPTY() (master, slave *os.File, err error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	var unlock int32
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, m.Fd(), unix.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		m.Close()
		return nil, nil, e
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	return m, s, nil
}
