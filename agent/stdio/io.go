package stdio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keelvm/keel/agent/errdefs"

	"golang.org/x/sys/unix"
)

// Limits, named so their behaviour is documented and tested.
const (
	// MaxReadLen caps one ReadStdout/ReadStderr. A larger request is clamped,
	// not refused: Kata's shim asks for 32 KiB and the ttrpc message limit is
	// 4 MiB, so 1 MiB leaves ample room for framing.
	MaxReadLen = 1 << 20

	// ExitGrace is how long after ProcessExited readers wait for the real EOF
	// before reporting EOF on an empty pipe that a grandchild still holds
	// open, and how long a stdin write may stay blocked after the exit.
	ExitGrace = 500 * time.Millisecond

	// MaxPipeSize bounds Options.PipeSize (agent.container_pipe_size); the
	// kernel's default unprivileged limit /proc/sys/fs/pipe-max-size is 1 MiB,
	// root may go higher, but more than 64 MiB per pipe is a configuration
	// mistake in a small guest.
	MaxPipeSize = 64 << 20
)

// Errors returned by IO methods; the RPC handlers map them to gRPC codes.
var (
	// ErrProcessExited: stdin cannot take data because the process is gone.
	ErrProcessExited = errdefs.New(errdefs.ErrFailedPrecondition, "process exited")
	// ErrStdinClosed: stdin was closed (CloseStdin) or never opened.
	ErrStdinClosed = errdefs.New(errdefs.ErrFailedPrecondition, "stdin is closed")
	// ErrNoStream: the stream does not exist (stderr of a terminal process).
	ErrNoStream = errdefs.New(errdefs.ErrInvalidArgument, "stream does not exist")
	// ErrAttached: the stream is served by the passfd fast path, not by RPCs.
	ErrAttached = errdefs.New(errdefs.ErrFailedPrecondition, "stream is attached to a passthrough connection")
	// ErrClosed: Close was called.
	ErrClosed = errdefs.New(errdefs.ErrFailedPrecondition, "stdio closed")
	// ErrNoConsole: the pty master did not arrive (process failed to start).
	ErrNoConsole = errors.New("console master not received")
)

// Options configures New.
type Options struct {
	// Terminal gives the process a pty created by libcontainer inside the
	// container; the master comes back over ConsoleSocket.
	Terminal bool
	// Stdin opens a stdin pipe; when false the process gets /dev/null.
	// Ignored for a terminal (the pty is always the process's stdin).
	Stdin bool
	// PipeSize, when > 0, sets the capacity of the stdio pipes with
	// F_SETPIPE_SZ (agent.container_pipe_size). At most MaxPipeSize.
	PipeSize int
}

// IO is the agent side of one process's stdio. The zero value is not usable;
// create it with New. All methods are safe for concurrent use.
type IO struct {
	terminal bool

	// Child side, given to libcontainer, closed by CloseChildSide.
	childMu                     sync.Mutex
	childIn, childOut, childErr *os.File
	consoleChild                *os.File
	consoleParent               *net.UnixConn
	consoleReady                chan struct{} // closed when the master arrived or failed
	consoleErr                  error
	master                      *os.File

	exit exitState

	stdin          *inStream
	stdout, stderr *outStream

	ctx    context.Context // cancelled by Close; bounds attached copies
	cancel context.CancelFunc
	wg     sync.WaitGroup

	closeOnce sync.Once
	connMu    sync.Mutex
	conns     []net.Conn

	pipeSize  int          // Options.PipeSize: 0 lets the fast path grow pipes
	pipeGrown atomic.Int64 // pipe capacity charged to pipeBudget, given back by Close
}

// New creates the pipes (or the console socket) for one process.
func New(opts Options) (_ *IO, retErr error) {
	if opts.PipeSize < 0 || opts.PipeSize > MaxPipeSize {
		return nil, fmt.Errorf("pipe size %d out of range [0, %d]", opts.PipeSize, MaxPipeSize)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &IO{terminal: opts.Terminal, pipeSize: opts.PipeSize, ctx: ctx, cancel: cancel, consoleReady: make(chan struct{})}
	defer func() {
		if retErr != nil {
			s.Close()
		}
	}()
	if opts.Terminal {
		return s, s.initConsole()
	}
	close(s.consoleReady)

	if opts.Stdin {
		r, w, err := pipe(opts.PipeSize, false)
		if err != nil {
			return nil, fmt.Errorf("unable to create stdin pipe: %w", err)
		}
		s.childIn = r
		s.stdin = &inStream{f: w, exit: &s.exit}
	} else {
		f, err := os.OpenFile(os.DevNull, os.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("unable to open %s: %w", os.DevNull, err)
		}
		s.childIn = f
		s.stdin = &inStream{exit: &s.exit} // no file: writes fail with ErrStdinClosed
	}
	r, w, err := pipe(opts.PipeSize, true)
	if err != nil {
		return nil, fmt.Errorf("unable to create stdout pipe: %w", err)
	}
	s.childOut, s.stdout = w, &outStream{name: "stdout", f: r, exit: &s.exit}
	r, w, err = pipe(opts.PipeSize, true)
	if err != nil {
		return nil, fmt.Errorf("unable to create stderr pipe: %w", err)
	}
	s.childErr, s.stderr = w, &outStream{name: "stderr", f: r, exit: &s.exit}
	return s, nil
}

// pipe returns a pipe whose agent-side end is non-blocking (so it lives in
// Go's poller and honours deadlines) and whose child-side end is blocking, as
// processes expect of their stdio. readSide tells which end the agent keeps.
func pipe(size int, agentReads bool) (r, w *os.File, err error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return nil, nil, err
	}
	agent := p[1]
	if agentReads {
		agent = p[0]
	}
	if size > 0 {
		if _, err := unix.FcntlInt(uintptr(p[0]), unix.F_SETPIPE_SZ, size); err != nil {
			unix.Close(p[0])
			unix.Close(p[1])
			return nil, nil, fmt.Errorf("F_SETPIPE_SZ %d: %w", size, err)
		}
	}
	if err := unix.SetNonblock(agent, true); err != nil {
		unix.Close(p[0])
		unix.Close(p[1])
		return nil, nil, err
	}
	return os.NewFile(uintptr(p[0]), "pipe-r"), os.NewFile(uintptr(p[1]), "pipe-w"), nil
}

// ChildFiles returns the files to put in libcontainer's Process.Stdin,
// Stdout and Stderr. All three are nil for a terminal (use ConsoleSocket).
func (s *IO) ChildFiles() (stdin, stdout, stderr *os.File) {
	s.childMu.Lock()
	defer s.childMu.Unlock()
	if s.terminal {
		return nil, nil, nil
	}
	return s.childIn, s.childOut, s.childErr
}

// ConsoleSocket returns the socket for libcontainer's Process.ConsoleSocket
// (nil unless Options.Terminal). libcontainer's init creates the pty inside
// the container and sends the master over it; IO receives it in the
// background, so no call is needed after Start (see ReceiveConsole).
func (s *IO) ConsoleSocket() *os.File {
	s.childMu.Lock()
	defer s.childMu.Unlock()
	return s.consoleChild
}

// CloseChildSide closes the agent's copies of the child-side descriptors.
// Call it once libcontainer has started the process (or failed to): until
// then the agent itself holds the pipes open and EOF cannot arrive.
func (s *IO) CloseChildSide() {
	s.childMu.Lock()
	defer s.childMu.Unlock()
	for _, f := range []**os.File{&s.childIn, &s.childOut, &s.childErr, &s.consoleChild} {
		if *f != nil {
			(*f).Close()
			*f = nil
		}
	}
}

// Terminal reports whether the process has a pty.
func (s *IO) Terminal() bool { return s.terminal }

// Write writes p to the process's stdin (Kata WriteStdin) and returns how
// many bytes were accepted. It blocks while the pipe is full (backpressure),
// until ctx is done, or, once the process exited, at most ExitGrace.
//
// When some bytes were accepted before ctx ended or the process went away,
// Write returns that count with a nil error: a short write, which the RPC
// reports in WriteStreamResponse.len, so the host never resends bytes the
// process already received. The next call reports the error.
// An empty p closes stdin, as Kata's WriteStdin with empty data does.
func (s *IO) Write(ctx context.Context, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, s.CloseStdin()
	}
	if err := s.waitConsole(ctx); err != nil {
		return 0, err
	}
	n, err := s.stdin.write(ctx, p, false)
	if n > 0 {
		return n, nil
	}
	return 0, err
}

// CloseStdin closes the process's stdin (Kata CloseStdin). For a terminal
// the pty stays open for output, so the VEOF character (^D) is written
// instead: a shell or cat reading the tty sees end of input. Closing twice is
// not an error.
func (s *IO) CloseStdin() error {
	if s.terminal {
		if err := s.waitConsole(context.Background()); err != nil {
			return err
		}
		_, err := s.stdin.write(context.Background(), []byte{4}, true)
		return err
	}
	return s.stdin.close()
}

// ReadStdout returns up to max bytes (clamped to MaxReadLen) of stdout,
// blocking until some are available, ctx is done, or the stream ends
// (io.EOF). For a terminal this is the pty output.
func (s *IO) ReadStdout(ctx context.Context, max int) ([]byte, error) {
	return s.ReadStdoutWithHeadroom(ctx, max, 0)
}

// ReadStdoutWithHeadroom is ReadStdout for a caller that encodes the data
// in place (protocol/readstream): the returned slice starts with headroom
// spare bytes, then the data. The data is read from the pipe straight into
// that slice, which belongs to the caller.
func (s *IO) ReadStdoutWithHeadroom(ctx context.Context, max, headroom int) ([]byte, error) {
	if err := s.waitConsole(ctx); err != nil {
		return nil, err
	}
	return s.stdout.readRPC(ctx, max, headroom, nil)
}

// ReadStdoutInto is ReadStdoutWithHeadroom taking the returned buffer from
// bufs (it still holds none while it waits), so a caller that knows when it
// is done with the data (it wrote the reply itself) can reuse the buffer.
func (s *IO) ReadStdoutInto(ctx context.Context, max, headroom int, bufs Buffers) ([]byte, error) {
	if err := s.waitConsole(ctx); err != nil {
		return nil, err
	}
	return s.stdout.readRPC(ctx, max, headroom, bufs)
}

// ReadStdoutNow is ReadStdoutInto for data already there: it never waits
// and returns ErrWouldBlock whenever ReadStdoutInto would have to wait or
// has something other than data to report (the end of the stream, an
// error): the caller then makes the blocking call, which reports it. A
// caller answering requests from its connection's reader uses it to answer
// at once, without a goroutine, when output is waiting.
func (s *IO) ReadStdoutNow(max, headroom int, bufs Buffers) ([]byte, error) {
	if !s.consoleUp() {
		return nil, ErrWouldBlock
	}
	return s.stdout.readReady(max, headroom, bufs)
}

// ReadStderrNow is ReadStdoutNow for stderr.
func (s *IO) ReadStderrNow(max, headroom int, bufs Buffers) ([]byte, error) {
	if s.terminal || !s.consoleUp() {
		return nil, ErrWouldBlock
	}
	return s.stderr.readReady(max, headroom, bufs)
}

// consoleUp reports whether the streams are ready without error (a
// terminal's master received; always true without a terminal).
func (s *IO) consoleUp() bool {
	select {
	case <-s.consoleReady:
		return s.consoleErr == nil
	default:
		return false
	}
}

// ReadStderrInto is ReadStdoutInto for stderr.
func (s *IO) ReadStderrInto(ctx context.Context, max, headroom int, bufs Buffers) ([]byte, error) {
	if s.terminal {
		return nil, io.EOF
	}
	return s.stderr.readRPC(ctx, max, headroom, bufs)
}

// ReadStderr is ReadStdout for stderr. A terminal has no separate stderr:
// it returns io.EOF at once.
func (s *IO) ReadStderr(ctx context.Context, max int) ([]byte, error) {
	return s.ReadStderrWithHeadroom(ctx, max, 0)
}

// ReadStderrWithHeadroom is ReadStdoutWithHeadroom for stderr.
func (s *IO) ReadStderrWithHeadroom(ctx context.Context, max, headroom int) ([]byte, error) {
	if s.terminal {
		return nil, io.EOF
	}
	return s.stderr.readRPC(ctx, max, headroom, nil)
}

// Resize sets the window size of the pty (Kata TtyWinResize).
func (s *IO) Resize(rows, cols uint32) error {
	if !s.terminal {
		return fmt.Errorf("resize: %w: process has no terminal", ErrNoStream)
	}
	if rows > 0xffff || cols > 0xffff {
		return fmt.Errorf("resize: rows %d / cols %d exceed 65535", rows, cols)
	}
	if err := s.waitConsole(context.Background()); err != nil {
		return err
	}
	rc, err := s.master.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(rows), Col: uint16(cols)})
	}); err != nil {
		return err
	}
	if ierr != nil {
		return fmt.Errorf("unable to set window size: %w", ierr)
	}
	return nil
}

// ProcessExited tells IO that the process has been reaped. From then on an
// empty stream reports EOF no later than ExitGrace from now, and blocked
// stdin writes fail after ExitGrace. Calling it again has no effect.
func (s *IO) ProcessExited() {
	s.exit.mark(time.Now().Add(ExitGrace), s.files)
}

func (s *IO) files() []*os.File {
	var fs []*os.File
	for _, f := range []*os.File{s.stdin.file(), s.stdout.file(), s.stderr.file()} {
		if f != nil {
			fs = append(fs, f)
		}
	}
	return fs
}

// Close releases every descriptor and stops attached copies; blocked reads
// and writes return ErrClosed. It waits for the copy goroutines to finish.
func (s *IO) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.CloseChildSide()
		if s.consoleParent != nil {
			s.consoleParent.Close()
		}
		<-s.consoleReady // the receiver no longer touches the streams
		s.connMu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.connMu.Unlock()
		for _, st := range []*outStream{s.stdout, s.stderr} {
			if st != nil {
				st.shut()
			}
		}
		if s.stdin != nil {
			s.stdin.shut()
		}
		// In terminal mode stdin and stdout share the master; shut closed it.
		s.wg.Wait()
		pipeBudget.give(int(s.pipeGrown.Swap(0)))
	})
	return nil
}
