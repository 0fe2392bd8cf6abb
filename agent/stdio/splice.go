package stdio

import (
	"context"
	"errors"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// spliceChunk is the most one splice(2) call may move: a default pipe
// (64 KiB) or an attached one (AttachPipeSize) is emptied in one call; a
// larger agent.container_pipe_size (up to MaxPipeSize) takes several turns
// of spliceTo's loop.
const spliceChunk = 1 << 20

// errNoSplice means splicing is impossible for this pair and no byte has
// moved: the caller copies through user space instead.
var errNoSplice = errors.New("splice not supported")

// spliceTo moves the stream's pipe into conn with splice(2), so the bytes
// never visit user space (the passfd fast path). Its exit handling is
// read's: after ProcessExited and ExitGrace, an empty pipe is EOF. It
// returns io.EOF at the end of the stream.
func (s *outStream) spliceTo(ctx context.Context, conn syscall.Conn) (moved int64, err error) {
	sc, err := conn.SyscallConn()
	if err != nil {
		return 0, errNoSplice
	}
	pc, err := s.f.SyscallConn()
	if err != nil {
		return 0, errNoSplice
	}
	if err := s.turn.acquire(ctx); err != nil {
		return 0, err
	}
	defer s.turn.release()
	stop := context.AfterFunc(ctx, func() { s.f.SetReadDeadline(past) })
	defer stop()
	for {
		if s.closed.Load() {
			return moved, ErrClosed
		}
		s.exit.arm(s.f.SetReadDeadline)
		if err := ctx.Err(); err != nil {
			return moved, err
		}
		// Wait until the pipe has data or lost its writers.
		werr := pc.Read(func(pfd uintptr) bool { return readable(int(pfd)) })
		switch {
		case werr == nil:
		case errors.Is(werr, os.ErrDeadlineExceeded):
			if err := ctx.Err(); err != nil {
				return moved, err
			}
			if !s.exit.graceOver() {
				continue
			}
			// Past the grace: only what is already there is moved.
			var ready bool
			pc.Control(func(pfd uintptr) { ready = readable(int(pfd)) })
			if !ready {
				return moved, io.EOF
			}
		case errors.Is(werr, os.ErrClosed):
			return moved, ErrClosed
		default:
			return moved, werr
		}
		var n int64
		var serr error
		// Control holds the pipe descriptor open while the socket waits.
		cerr := pc.Control(func(pfd uintptr) {
			werr := sc.Write(func(sfd uintptr) bool {
				n, serr = unix.Splice(int(pfd), nil, int(sfd), nil, spliceChunk, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
				// EAGAIN with bytes in the pipe: the socket is full, wait
				// for it. EAGAIN on an empty pipe: back to the pipe wait.
				return !(errors.Is(serr, unix.EAGAIN) && pending(int(pfd)))
			})
			if serr == nil && werr != nil {
				serr = werr
			}
		})
		if cerr != nil {
			return moved, ErrClosed
		}
		switch {
		case n > 0:
			moved += n
		case serr == nil:
			return moved, io.EOF // n == 0: no writers and nothing left
		case errors.Is(serr, unix.EAGAIN), errors.Is(serr, unix.EINTR):
		case moved == 0 && (errors.Is(serr, unix.EINVAL) || errors.Is(serr, unix.ENOSYS) || errors.Is(serr, unix.EOPNOTSUPP)):
			return 0, errNoSplice
		default:
			return moved, serr
		}
	}
}

// readable reports whether a read on fd would not block (data or hangup).
func readable(fd int) bool {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(p, 0)
	return err == nil && n > 0 && p[0].Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) != 0
}

// pending reports whether the pipe fd holds unread bytes.
func pending(fd int) bool {
	n, err := unix.IoctlGetInt(fd, unix.TIOCINQ) // FIONREAD
	return err == nil && n > 0
}
