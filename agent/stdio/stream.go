package stdio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// past is a deadline in the past: setting it wakes a blocked read or write.
var past = time.Unix(1, 0)

// exitState records that the process exited and when the grace ends. Its
// mutex also orders deadline updates on the stream files, so a stream that
// re-arms its deadline cannot overwrite the one ProcessExited just set.
type exitState struct {
	mu       sync.Mutex
	exited   bool
	graceEnd time.Time
}

// mark records the exit; files is called under the lock, so it may read
// stream fields that the console receiver sets under the same lock.
func (e *exitState) mark(graceEnd time.Time, files func() []*os.File) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.exited {
		return
	}
	e.exited, e.graceEnd = true, graceEnd
	for _, f := range files() {
		f.SetReadDeadline(graceEnd)
		f.SetWriteDeadline(graceEnd)
	}
}

// arm sets the deadline used for the next blocking call: none while the
// process runs, the end of the grace once it exited.
func (e *exitState) arm(set func(time.Time) error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var d time.Time
	if e.exited {
		d = e.graceEnd
	}
	set(d)
}

// graceOver reports whether the process exited and ExitGrace has passed.
func (e *exitState) graceOver() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.exited && !time.Now().Before(e.graceEnd)
}

// outStream is the agent's read end of stdout or stderr (or the pty master).
type outStream struct {
	name string
	exit *exitState

	turn     turn // one reader at a time, so chunks keep their order
	f        *os.File
	eof      bool // under turn
	attached atomic.Bool
	closed   atomic.Bool
}

// turn serialises callers like a mutex, but a caller waiting for its turn
// gives up when its context ends.
type turn struct {
	once sync.Once
	ch   chan struct{}
}

func (t *turn) acquire(ctx context.Context) error {
	t.once.Do(func() { t.ch = make(chan struct{}, 1) })
	select {
	case t.ch <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (t *turn) release() { <-t.ch }

func (s *outStream) file() *os.File {
	if s == nil {
		return nil
	}
	return s.f
}

// readRPC serves ReadStdout/ReadStderr.
func (s *outStream) readRPC(ctx context.Context, max int) ([]byte, error) {
	if s == nil {
		return nil, ErrNoStream
	}
	if max <= 0 {
		return nil, fmt.Errorf("read %s: length %d must be positive", s.name, max)
	}
	max = min(max, MaxReadLen)
	bp := rpcBufs.Get().(*[]byte)
	defer rpcBufs.Put(bp)
	buf := (*bp)[:max]
	n, err := s.read(ctx, buf, false)
	if err != nil {
		return nil, err
	}
	// One pipe read returns at most what the pipe holds (64 KiB by
	// default). While more is already waiting, gather it into the same
	// answer: fewer RPCs per byte, and never a wait for data that is not
	// there yet.
	for n < max {
		avail := s.available()
		if avail <= 0 {
			break
		}
		m, err := s.read(ctx, buf[n:min(n+avail, max)], false)
		n += m
		if err != nil {
			break // EOF or an error: the next call reports it
		}
	}
	// Copy out exactly n bytes: the pooled buffer is MaxReadLen long, and
	// allocating that per call made large requests slower than small ones.
	return append([]byte(nil), buf[:n]...), nil
}

// rpcBufs holds MaxReadLen buffers for readRPC.
var rpcBufs = sync.Pool{New: func() any { b := make([]byte, MaxReadLen); return &b }}

// available reports how many bytes the stream's pipe or pty holds now
// (FIONREAD, spelled TIOCINQ in x/sys), or 0 when that cannot be known.
func (s *outStream) available() int {
	rc, err := s.f.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	_ = rc.Control(func(fd uintptr) {
		v, err := unix.IoctlGetInt(int(fd), unix.TIOCINQ) // FIONREAD
		if err == nil {
			n = v
		}
	})
	return n
}

// read fills p with what is available (at least one byte) or returns io.EOF.
// fromAttach is true for the passfd copier that owns an attached stream.
func (s *outStream) read(ctx context.Context, p []byte, fromAttach bool) (int, error) {
	switch {
	case s.closed.Load():
		return 0, ErrClosed
	case s.attached.Load() && !fromAttach:
		return 0, ErrAttached
	}
	if err := s.turn.acquire(ctx); err != nil {
		return 0, err
	}
	defer s.turn.release()
	switch {
	case s.closed.Load():
		return 0, ErrClosed
	case s.eof:
		return 0, io.EOF
	}
	stop := context.AfterFunc(ctx, func() { s.f.SetReadDeadline(past) })
	defer stop()
	for {
		s.exit.arm(s.f.SetReadDeadline)
		// After arming: a cancellation that fired before it was overwritten.
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		n, err := s.f.Read(p)
		if n > 0 {
			return n, nil
		}
		switch {
		case err == nil:
			continue
		case errors.Is(err, io.EOF), errors.Is(err, syscall.EIO):
			// EIO: the pty slave has no more holders.
			s.eof = true
			return 0, io.EOF
		case errors.Is(err, os.ErrDeadlineExceeded):
			if err := ctx.Err(); err != nil {
				return 0, err
			}
			if !s.exit.graceOver() {
				continue // a stale wake-up, or the exit deadline moved
			}
			n, err := s.readNow(p)
			if n > 0 {
				return n, nil
			}
			if err == nil || errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EIO) {
				// Empty after the grace: whatever still holds the write end
				// is not the process we ran. Report the end of the stream.
				s.eof = true
				return 0, io.EOF
			}
			return 0, fmt.Errorf("read %s: %w", s.name, err)
		case errors.Is(err, os.ErrClosed):
			return 0, ErrClosed
		default:
			return 0, fmt.Errorf("read %s: %w", s.name, err)
		}
	}
}

// readNow reads without waiting; (0, EAGAIN) means the pipe is empty.
func (s *outStream) readNow(p []byte) (int, error) {
	s.f.SetReadDeadline(time.Time{}) // RawConn.Read refuses to run past a deadline
	rc, err := s.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		n, rerr = unix.Read(int(fd), p)
		return true
	}); err != nil {
		return 0, err
	}
	return max(n, 0), rerr
}

// attach reserves the stream for the passfd copier.
func (s *outStream) attach() error {
	if s == nil {
		return ErrNoStream
	}
	if s.attached.Swap(true) {
		return ErrAttached
	}
	return nil
}

// shut closes the file; a blocked read returns ErrClosed.
func (s *outStream) shut() {
	s.closed.Store(true)
	s.f.Close() // wakes a blocked reader with os.ErrClosed
}

// inStream is the agent's write end of stdin (or the pty master).
type inStream struct {
	exit *exitState

	turn     turn // one writer at a time, so chunks keep their order
	f        *os.File
	closed   atomic.Bool // set by close/shut without waiting for a blocked writer
	attached atomic.Bool
}

func (s *inStream) file() *os.File {
	if s == nil {
		return nil
	}
	return s.f
}

// write writes all of p unless ctx, the exit grace or an error stops it.
// internal is true for the attached copier and the terminal's ^D.
func (s *inStream) write(ctx context.Context, p []byte, internal bool) (int, error) {
	if s.attached.Load() && !internal {
		return 0, ErrAttached
	}
	if err := s.turn.acquire(ctx); err != nil {
		return 0, err
	}
	defer s.turn.release()
	if s.closed.Load() || s.f == nil {
		return 0, ErrStdinClosed
	}
	stop := context.AfterFunc(ctx, func() { s.f.SetWriteDeadline(past) })
	defer stop()
	written := 0
	for written < len(p) {
		s.exit.arm(s.f.SetWriteDeadline)
		if err := ctx.Err(); err != nil {
			return written, err
		}
		n, err := s.f.Write(p[written:])
		written += n
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
			if err := ctx.Err(); err != nil {
				return written, err
			}
			if s.exit.graceOver() {
				return written, ErrProcessExited
			}
		case errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.EIO):
			// No reader left: the process and everything it forked is gone.
			return written, ErrProcessExited
		case errors.Is(err, os.ErrClosed):
			return written, ErrStdinClosed
		default:
			return written, fmt.Errorf("write stdin: %w", err)
		}
	}
	return written, nil
}

// close closes stdin; a write blocked on a full pipe returns ErrStdinClosed.
func (s *inStream) close() error {
	if s.closed.Swap(true) || s.f == nil {
		return nil
	}
	return s.f.Close()
}

func (s *inStream) shut() { s.close() }
