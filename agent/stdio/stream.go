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
	eof      bool    // under turn
	probe    [1]byte // under turn: readRPC's read of an empty-looking stream
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

// tryAcquire takes the turn if it is free.
func (t *turn) tryAcquire() bool {
	t.once.Do(func() { t.ch = make(chan struct{}, 1) })
	select {
	case t.ch <- struct{}{}:
		return true
	default:
		return false
	}
}

func (t *turn) release() { <-t.ch }

func (s *outStream) file() *os.File {
	if s == nil {
		return nil
	}
	return s.f
}

// readRPC serves ReadStdout/ReadStderr: up to limit bytes, returned after
// headroom spare bytes (for a caller that encodes the data in place, see
// protocol/readstream; 0 for none).
//
// The buffer is allocated for this answer only, once data is there, and
// sized to what the pipe holds (FIONREAD), never more than limit: a pending
// call holds no buffer at all, however large its len, so N pending calls
// never pin N buffers; and the data is read from the pipe straight into the
// buffer the caller returns, with no copy out of a pooled buffer (except
// for what gather adds). Fresh allocations rather than a pool because the
// caller hands the buffer on (to ttrpc) and cannot tell when it is done
// with it.
func (s *outStream) readRPC(ctx context.Context, limit, headroom int, bufs Buffers) ([]byte, error) {
	if s == nil {
		return nil, ErrNoStream
	}
	if limit <= 0 {
		return nil, fmt.Errorf("read %s: length %d must be positive", s.name, limit)
	}
	if headroom < 0 {
		return nil, fmt.Errorf("read %s: headroom %d must not be negative", s.name, headroom)
	}
	limit = min(limit, MaxReadLen)
	if bufs == nil {
		bufs = freshBuffers{}
	}
	if err := s.enter(ctx, false); err != nil {
		return nil, err
	}
	defer s.turn.release()

	var out []byte // headroom, then the data; nil until the pipe has data
	get := func(fd int) []byte {
		if out == nil {
			avail, ok := inq(fd)
			switch {
			case !ok:
				avail = unknownAvail
			case avail == 0:
				// Empty, or at EOF: a one-byte probe tells them apart
				// without allocating (EAGAIN, 0, or one real byte).
				return s.probe[:]
			}
			out = bufs.Get(headroom + min(avail, limit))
		}
		return out[headroom:]
	}
	put := func() { // EAGAIN after all: hold nothing while waiting
		if out != nil {
			bufs.Put(out)
		}
		out = nil
	}
	n, err := s.readHeld(ctx, lazyBuf{get, put})
	if err != nil {
		put()
		return nil, err
	}
	if out == nil { // the probe caught the first byte of new data
		avail, ok := s.available()
		if !ok {
			avail = unknownAvail
		}
		out = bufs.Get(headroom + min(limit, 1+avail))
		out[headroom] = s.probe[0]
	}
	return s.gatherInto(out, n, limit, headroom, bufs), nil
}

// gatherInto completes an answer holding n bytes after headroom in out.
// One pipe read returns at most what the pipe held when the buffer was
// sized. While more is already waiting, gather it into the same answer:
// fewer RPCs per byte, and never a wait for data that is not there yet.
func (s *outStream) gatherInto(out []byte, n, limit, headroom int, bufs Buffers) []byte {
	if n < limit {
		if more := s.gather(limit - n); len(more) > 0 {
			joined := bufs.Get(headroom + n + len(more))
			copy(joined[headroom:], out[headroom:headroom+n])
			copy(joined[headroom+n:], more)
			putScratch(more)
			bufs.Put(out)
			out, n = joined, n+len(more)
		}
	}
	return out[:headroom+n]
}

// ErrWouldBlock is ReadStdoutNow's answer when it has nothing to return at
// once: the stream is empty, another reader has its turn, or anything else
// that the blocking read handles (the end of the stream and every error
// included, so they are reported by one path, in order).
var ErrWouldBlock = errors.New("stdio: read would block")

// readReady is readRPC for data that is already there: it never waits (not
// for the turn, not for data) and returns data or ErrWouldBlock.
func (s *outStream) readReady(limit, headroom int, bufs Buffers) ([]byte, error) {
	if s == nil || limit <= 0 || headroom < 0 || s.closed.Load() || s.attached.Load() {
		return nil, ErrWouldBlock
	}
	limit = min(limit, MaxReadLen)
	if bufs == nil {
		bufs = freshBuffers{}
	}
	if !s.turn.tryAcquire() {
		return nil, ErrWouldBlock
	}
	defer s.turn.release()
	if s.eof {
		return nil, ErrWouldBlock
	}
	// The buffer is taken for the whole limit and the pipe read straight
	// into it, once: no FIONREAD to size it first (the caller's pool makes
	// a buffer of the full size cheap, and can move a short answer to a
	// smaller one), and no second read after a short one, since a pipe
	// read returns less than asked only when it emptied the pipe. One
	// read(2) per answer; an empty pipe costs one read (EAGAIN).
	out := bufs.Get(headroom + limit)
	n, err := s.readNonblock(out[headroom:])
	if n <= 0 || err != nil { // empty, EOF or an error: the blocking read tells them apart
		bufs.Put(out)
		return nil, ErrWouldBlock
	}
	return out[:headroom+n], nil
}

// gather reads, without waiting, up to limit bytes that the stream already
// holds into a pooled scratch buffer and returns them (nil when there is
// nothing; the caller gives the buffer back with putScratch). Gathering is
// the uncommon case (a read larger than what the pipe held when it was
// sized, with the writer still going), so it pays one copy into the answer
// rather than growing the answer's buffer step by step.
func (s *outStream) gather(limit int) []byte {
	var buf []byte
	n := 0
	for n < limit {
		avail, _ := s.available()
		if avail <= 0 {
			break
		}
		if buf == nil {
			buf = (*scratch.Get().(*[]byte))[:min(limit, MaxReadLen)]
		}
		m, err := s.readNonblock(buf[n:min(n+avail, limit)])
		n += m
		if m == 0 || err != nil {
			break // empty, EOF or an error: the next call reports it
		}
	}
	if n == 0 && buf != nil {
		putScratch(buf)
		return nil
	}
	return buf[:n]
}

// scratch holds gather's buffers, taken only while data is being moved.
var scratch = sync.Pool{New: func() any { b := make([]byte, MaxReadLen); return &b }}

func putScratch(b []byte) {
	b = b[:cap(b)]
	scratch.Put(&b)
}

// Buffers is where readRPC takes the buffer it returns. Get(n) returns a
// slice of length n (its contents need not be zero); Put takes back a
// buffer that readRPC took and no longer needs. The buffer readRPC returns
// belongs to the caller, who may give it back to its own pool once it is
// done with it.
type Buffers interface {
	Get(n int) []byte
	Put([]byte)
}

// freshBuffers allocates every buffer and leaves the rest to the garbage
// collector: for a caller that hands the buffer on (to ttrpc) and cannot
// tell when it is done with it.
type freshBuffers struct{}

func (freshBuffers) Get(n int) []byte { return make([]byte, n) }
func (freshBuffers) Put([]byte)       {}

// unknownAvail sizes the buffer when FIONREAD cannot say what the stream
// holds: a default pipe's capacity.
const unknownAvail = 64 << 10

// inq is FIONREAD (spelled TIOCINQ in x/sys): how many bytes the pipe or
// pty holds now; ok is false when the kernel cannot say.
func inq(fd int) (int, bool) {
	n, err := unix.IoctlGetInt(fd, unix.TIOCINQ)
	return n, err == nil && n >= 0
}

// available is inq on the stream's file.
func (s *outStream) available() (n int, ok bool) {
	rc, err := s.f.SyscallConn()
	if err != nil {
		return 0, false
	}
	_ = rc.Control(func(fd uintptr) { n, ok = inq(int(fd)) })
	return n, ok
}

// readNonblock reads what the stream holds now into p, without waiting
// (the file is non-blocking) and whatever its deadline; (0, nil) means
// empty or EOF, which the next blocking read tells apart.
func (s *outStream) readNonblock(p []byte) (int, error) {
	rc, err := s.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	if err := rc.Control(func(fd uintptr) {
		for {
			n, rerr = unix.Read(int(fd), p)
			if rerr != unix.EINTR {
				break
			}
		}
	}); err != nil {
		return 0, err
	}
	if rerr == unix.EAGAIN {
		return 0, nil
	}
	return max(n, 0), rerr
}

// read fills p with what is available (at least one byte) or returns io.EOF.
// fromAttach is true for the passfd copier that owns an attached stream.
func (s *outStream) read(ctx context.Context, p []byte, fromAttach bool) (int, error) {
	if err := s.enter(ctx, fromAttach); err != nil {
		return 0, err
	}
	defer s.turn.release()
	return s.readHeld(ctx, lazyBuf{get: func(int) []byte { return p }})
}

// lazyBuf is a buffer taken only for a read that is about to happen and
// given back (put, when set) while the reader waits. get receives the
// stream's descriptor, so it can size the buffer to what the stream holds.
type lazyBuf struct {
	get func(fd int) []byte
	put func()
}

// enter checks that the stream can be read by this caller and takes the
// turn; the caller releases it.
func (s *outStream) enter(ctx context.Context, fromAttach bool) error {
	switch {
	case s.closed.Load():
		return ErrClosed
	case s.attached.Load() && !fromAttach:
		return ErrAttached
	}
	return s.turn.acquire(ctx)
}

// readHeld reads into the buffer taken from b only while the stream is
// readable, so a caller waiting for data holds no buffer. The caller holds
// the turn.
func (s *outStream) readHeld(ctx context.Context, b lazyBuf) (int, error) {
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
			n, err := s.readNow(b)
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
			n, rerr = unix.Read(int(fd), b.get(int(fd)))
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

// readNow reads into b without waiting; (0, EAGAIN) means the stream is
// empty.
func (s *outStream) readNow(b lazyBuf) (int, error) {
	s.f.SetReadDeadline(time.Time{}) // RawConn.Read refuses to run past a deadline
	rc, err := s.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		n, rerr = unix.Read(int(fd), b.get(int(fd)))
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
