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

// readRPC serves ReadStdout/ReadStderr. While the stream is empty it holds
// no buffer: one is taken from a pool only when data (or EOF) is there, so
// a pending call costs its goroutine and a few words however large its len,
// and N pending calls never pin N buffers.
func (s *outStream) readRPC(ctx context.Context, max int) ([]byte, error) {
	if s == nil {
		return nil, ErrNoStream
	}
	if max <= 0 {
		return nil, fmt.Errorf("read %s: length %d must be positive", s.name, max)
	}
	max = min(max, MaxReadLen)
	var bp *[]byte
	pool := &smallBufs
	if max > smallReadLen {
		pool = &largeBufs
	}
	get := func() []byte {
		if bp == nil {
			bp = pool.Get().(*[]byte)
		}
		return (*bp)[:max]
	}
	put := func() {
		if bp != nil {
			pool.Put(bp)
			bp = nil
		}
	}
	defer put()
	n, err := s.readLazy(ctx, lazyBuf{get, put}, false)
	if err != nil {
		return nil, err
	}
	buf := get()
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
	// Copy out exactly n bytes: the pooled buffer is reused, and allocating
	// a MaxReadLen buffer per call made large requests slower than small.
	return append([]byte(nil), buf[:n]...), nil
}

// smallReadLen splits readRPC's pools: Kata's shims ask for 32 KiB, and a
// small request should not take a MaxReadLen buffer even for the few
// microseconds it reads.
const smallReadLen = 64 << 10

// smallBufs and largeBufs hold readRPC's buffers, only while they are
// being filled and copied out.
var (
	smallBufs = sync.Pool{New: func() any { b := make([]byte, smallReadLen); return &b }}
	largeBufs = sync.Pool{New: func() any { b := make([]byte, MaxReadLen); return &b }}
)

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
	return s.readLazy(ctx, lazyBuf{get: func() []byte { return p }}, fromAttach)
}

// lazyBuf is a buffer taken only for a read that is about to happen and
// given back (put, when set) while the reader waits.
type lazyBuf struct {
	get func() []byte
	put func()
}

// readLazy is read with the buffer taken from b only while the stream is
// readable: a caller waiting for data holds no buffer.
func (s *outStream) readLazy(ctx context.Context, b lazyBuf, fromAttach bool) (int, error) {
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
		n, err := s.readWhenReady(b)
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
			n, err := s.readNow(b.get())
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

// readWhenReady waits in the poller until the stream is readable, then
// reads into b; it is os.File.Read except that the buffer is held only
// across the read(2) itself and given back before waiting.
func (s *outStream) readWhenReady(b lazyBuf) (int, error) {
	rc, err := s.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			n, rerr = unix.Read(int(fd), b.get())
			if rerr != unix.EINTR {
				break
			}
		}
		if rerr == unix.EAGAIN {
			if b.put != nil {
				b.put()
			}
			return false // wait in the poller, holding nothing
		}
		return true
	})
	switch {
	case err != nil && s.closed.Load():
		return 0, os.ErrClosed // poll's "use of closed file", as File.Read says it
	case err != nil:
		return 0, err
	case rerr != nil:
		return 0, rerr
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
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
