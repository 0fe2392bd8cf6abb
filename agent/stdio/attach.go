package stdio

import (
	"errors"
	"io"
	"net"
	"syscall"
)

// attachBufLen is the copy buffer of one attached stream: larger than the
// default 64 KiB pipe so a full pipe is emptied in one read.
const attachBufLen = 256 << 10

// closeWriter is a connection that can signal EOF while staying readable
// (*net.UnixConn, *net.TCPConn, *vsock.Conn).
type closeWriter interface{ CloseWrite() error }

// AttachStdout forwards the process's stdout to conn (Kata passfd fast
// path) until EOF, with the same exit grace as ReadStdout, then half-closes
// conn (CloseWrite, or Close when conn cannot half-close). From then on
// ReadStdout returns ErrAttached. IO owns conn: Close closes it.
func (s *IO) AttachStdout(conn net.Conn) error {
	if err := s.waitConsole(s.ctx); err != nil {
		return err
	}
	return s.attachOut(s.stdout, conn)
}

// AttachStderr is AttachStdout for stderr (ErrNoStream for a terminal).
func (s *IO) AttachStderr(conn net.Conn) error {
	if s.terminal {
		return ErrNoStream
	}
	return s.attachOut(s.stderr, conn)
}

func (s *IO) attachOut(st *outStream, conn net.Conn) error {
	if err := st.attach(); err != nil {
		return err
	}
	if !s.terminal && s.pipeSize == 0 {
		// Fewer, larger moves per MB (see AttachPipeSize). Close gives
		// the capacity back; charged before track, so a Close that
		// track does not see has not missed it either.
		s.pipeGrown.Add(int64(st.growPipe(AttachPipeSize, pipeBudget)))
	}
	if !s.track(conn) {
		pipeBudget.give(int(s.pipeGrown.Swap(0)))
		return ErrClosed
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		// splice(2) for every socket that takes it, AF_VSOCK included:
		// Linux 6.1's vsock has no sendpage, so the kernel copies each
		// pipe page into its own 4 KiB packet, but that one in-kernel
		// copy costs the guest less than read(2)+write(2) through the
		// agent. Under QEMU TCG (tests/bench/vmbench
		// BenchmarkStdoutVsockPaired, 32 MiB, 64 KiB pipe, load 14-19)
		// QEMU spent 32-38 ms of CPU per MB streamed against 41-45 with
		// the copy loop (raw AF_VSOCK: 8-9), and the 16x as many packets
		// cost the host's vsock device no measurable CPU (5.5 ms/MB both).
		if sc, ok := conn.(syscall.Conn); ok && !s.terminal {
			_, err := st.spliceTo(s.ctx, sc)
			switch {
			case errors.Is(err, io.EOF):
				halfClose(conn)
				return
			case !errors.Is(err, errNoSplice):
				s.abandon(st, conn)
				return
			}
			// No byte moved: copy through user space below.
		}
		buf := make([]byte, attachBufLen)
		for {
			n, err := st.read(s.ctx, buf, true)
			if n > 0 {
				if _, werr := conn.Write(buf[:n]); werr != nil {
					s.abandon(st, conn)
					return
				}
			}
			if errors.Is(err, io.EOF) {
				halfClose(conn)
				return
			}
			if err != nil {
				s.abandon(st, conn)
				return
			}
		}
	}()
	return nil
}

// abandon ends an attached stream that failed before its end: the host
// closed the connection (or it broke), or the stream could not be read.
// The attachment is one-shot (ReadStdout cannot take the stream over), so
// nothing will ever read the pipe again: its read end is closed at once,
// not at Close, and the process's next write fails with EPIPE (SIGPIPE by
// default) instead of blocking forever on a full pipe, as with Kata's agent,
// which drops its end of the pipe when its copy task ends. For a terminal
// the stream is the pty master, which stdin shares: closing it hangs up
// the terminal (the process reads EOF and its writes fail with EIO). When
// the IO itself was closed, Close shuts the stream. The grown pipe's
// charge stays until Close: the kernel keeps charging the pipe's capacity
// to its owner until the writer closes it too.
func (s *IO) abandon(st *outStream, conn net.Conn) {
	conn.Close()
	if s.ctx.Err() == nil {
		st.shut()
	}
}

// halfClose signals EOF on conn: CloseWrite when it can, else Close.
func halfClose(conn net.Conn) {
	if cw, ok := conn.(closeWriter); ok && cw.CloseWrite() == nil {
		return
	}
	conn.Close()
}

// AttachStdin copies conn into the process's stdin; EOF on conn closes
// stdin (CloseStdin). If the process cannot take more input, conn is closed
// so the host sees the failure. IO owns conn: Close closes it.
func (s *IO) AttachStdin(conn net.Conn) error {
	if err := s.waitConsole(s.ctx); err != nil {
		return err
	}
	st := s.stdin
	if st.closed.Load() {
		return ErrStdinClosed
	}
	if st.attached.Swap(true) {
		return ErrAttached
	}
	if !s.track(conn) {
		return ErrClosed
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, attachBufLen)
		for {
			n, err := conn.Read(buf)
			if n > 0 {
				// write returns an error whenever it stops short.
				if _, werr := st.write(s.ctx, buf[:n], true); werr != nil {
					conn.Close()
					return
				}
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					s.CloseStdin()
				}
				return
			}
		}
	}()
	return nil
}

// track records conn so Close can close it; false if IO is already closed.
func (s *IO) track(conn net.Conn) bool {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if s.ctx.Err() != nil {
		conn.Close()
		return false
	}
	s.conns = append(s.conns, conn)
	return true
}
