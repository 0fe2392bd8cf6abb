package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/keelvm/keel/protocol/attach"
)

// terminal is keelctl's stdin when it is a terminal and --tty was asked
// for; otherwise every method is a no-op.
type terminal struct {
	f     *os.File
	saved *unix.Termios
}

func openTerminal(stdin io.Reader, tty bool) *terminal {
	f, ok := stdin.(*os.File)
	if !tty || !ok {
		return &terminal{}
	}
	if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
		return &terminal{} // not a terminal: forward bytes as they come
	}
	return &terminal{f: f}
}

func (t *terminal) size() (attach.WinSize, bool) {
	if t.f == nil {
		return attach.WinSize{}, false
	}
	ws, err := unix.IoctlGetWinsize(int(t.f.Fd()), unix.TIOCGWINSZ)
	if err != nil || ws.Row == 0 || ws.Col == 0 {
		return attach.WinSize{}, false
	}
	return attach.WinSize{Rows: ws.Row, Cols: ws.Col}, true
}

// makeRaw puts the terminal in raw mode (cfmakeraw(3)): keys, ^C and ^D
// included, go to the container's pty, which does the line discipline.
func (t *terminal) makeRaw() error {
	if t.f == nil {
		return nil
	}
	fd := int(t.f.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN] = 1
	raw.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return err
	}
	t.saved = old
	return nil
}

func (t *terminal) restore() {
	if t.f != nil && t.saved != nil {
		_ = unix.IoctlSetTermios(int(t.f.Fd()), unix.TCSETS, t.saved)
	}
}

// watchResize sends the current size, then a new one on every SIGWINCH,
// until ctx ends.
func (t *terminal) watchResize(ctx context.Context) <-chan attach.WinSize {
	out := make(chan attach.WinSize, 1)
	if t.f == nil {
		return out
	}
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	go func() {
		defer signal.Stop(winch)
		for {
			if ws, ok := t.size(); ok {
				select {
				case out <- ws:
				case <-ctx.Done():
					return
				}
			}
			select {
			case <-winch:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}
