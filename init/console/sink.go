// Package console carries the agent's log out of the guest and offers the
// debug shell:
//
//   - Sink: an asynchronous, bounded line queue in front of a slow writer
//     (a 115200-baud serial console, a host on vsock). Writes never block:
//     when the queue is full the oldest lines are dropped and counted, and
//     the reader is told how many it missed.
//   - Stream: the agent.log_vport service. The agent listens; every host
//     connection first receives the ring of recent lines (so boot logs are
//     not lost before the host connects), then the live log.
//   - NewLogger: the slog logger writing JSON lines (Kata's agent logs
//     JSON) to the console sink and the stream.
//   - DebugConsole: agent.debug_console_vport: one shell per connection,
//     on a pty when /dev/ptmx works, pipes otherwise.
//
// Listeners are passed in as net.Listener (Listen/VsockListen), so tests
// use unix sockets.
package console

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// DefaultSinkBytes bounds a Sink's queue.
const DefaultSinkBytes = 256 << 10

// Sink queues writes for a writer and copies them in its own goroutine.
type Sink struct {
	w   io.Writer
	max int

	mu      sync.Mutex
	cond    *sync.Cond
	queue   [][]byte
	bytes   int
	dropped uint64 // total
	unseen  uint64 // dropped since the last notice to the reader
	closed  bool
	busy    bool // the loop is writing a batch
	err     error
	done    chan struct{}
}

// NewSink starts copying to w; maxBytes bounds the queue (<= 0: default).
func NewSink(w io.Writer, maxBytes int) *Sink {
	if maxBytes <= 0 {
		maxBytes = DefaultSinkBytes
	}
	s := &Sink{w: w, max: maxBytes, done: make(chan struct{})}
	s.cond = sync.NewCond(&s.mu)
	go s.loop()
	return s
}

// Write queues a copy of p; it never blocks on the underlying writer. It
// fails only after the sink is closed or its writer failed.
func (s *Sink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		if s.err != nil {
			return 0, s.err
		}
		return 0, io.ErrClosedPipe
	}
	if len(p) > s.max {
		p = p[len(p)-s.max:]
	}
	for s.bytes+len(p) > s.max && len(s.queue) > 0 {
		s.bytes -= len(s.queue[0])
		s.queue[0] = nil
		s.queue = s.queue[1:]
		s.dropped++
		s.unseen++
	}
	s.queue = append(s.queue, append([]byte(nil), p...))
	s.bytes += len(p)
	s.cond.Signal()
	return len(p), nil
}

// Dropped returns how many writes were dropped because the reader was slow.
func (s *Sink) Dropped() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

// Close stops the sink after the queued lines were written (or the writer
// failed). It does not close the writer.
func (s *Sink) Close() {
	s.mu.Lock()
	s.closed = true
	s.cond.Signal()
	s.mu.Unlock()
	<-s.done
}

// Done is closed when the copying goroutine ended (Close, or write error).
func (s *Sink) Done() <-chan struct{} { return s.done }

func (s *Sink) loop() {
	defer close(s.done)
	for {
		s.mu.Lock()
		for len(s.queue) == 0 && !s.closed {
			s.cond.Wait()
		}
		if len(s.queue) == 0 {
			s.mu.Unlock()
			return
		}
		batch := s.queue
		s.queue, s.bytes, s.busy = nil, 0, true
		unseen := s.unseen
		s.unseen = 0
		s.mu.Unlock()
		if unseen > 0 {
			batch = append([][]byte{fmt.Appendf(nil, "keel: %d log lines dropped (slow reader)\n", unseen)}, batch...)
		}
		for _, b := range batch {
			if _, err := s.w.Write(b); err != nil {
				s.mu.Lock()
				s.closed, s.err, s.queue, s.bytes, s.busy = true, err, nil, 0, false
				s.mu.Unlock()
				return
			}
		}
		s.mu.Lock()
		s.busy = false
		s.mu.Unlock()
	}
}

// Flush waits until everything queued so far was written, at most timeout
// (the power-off path uses it so the last lines reach the console).
func (s *Sink) Flush(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		s.mu.Lock()
		idle := (len(s.queue) == 0 && !s.busy) || s.closed
		s.mu.Unlock()
		if idle {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}
