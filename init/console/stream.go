package console

import (
	"errors"
	"net"
	"sync"
)

// Limits of the log stream.
const (
	// RingBytes is how much recent log a new connection receives first.
	RingBytes = 128 << 10
	// MaxClients bounds simultaneous log connections; extra ones are
	// closed at once.
	MaxClients = 8
)

// Stream fans log lines out to connected readers and keeps a ring of recent
// lines for readers that connect later.
type Stream struct {
	mu      sync.Mutex
	ring    [][]byte
	bytes   int
	clients map[*Sink]net.Conn
	dropped uint64 // lines dropped by clients that went away
	refused uint64
}

// NewStream returns an empty stream.
func NewStream() *Stream { return &Stream{clients: map[*Sink]net.Conn{}} }

// Write records one log line (slog handlers write one record per call).
func (s *Stream) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	line := append([]byte(nil), p...)
	for s.bytes+len(line) > RingBytes && len(s.ring) > 0 {
		s.bytes -= len(s.ring[0])
		s.ring[0] = nil
		s.ring = s.ring[1:]
	}
	if len(line) <= RingBytes {
		s.ring = append(s.ring, line)
		s.bytes += len(line)
	}
	for c := range s.clients {
		_, _ = c.Write(line)
	}
	return len(p), nil
}

// Dropped returns the number of lines dropped for slow readers so far.
func (s *Stream) Dropped() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.dropped
	for c := range s.clients {
		n += c.Dropped()
	}
	return n
}

// Clients returns the number of connected readers.
func (s *Stream) Clients() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.clients)
}

// Serve accepts readers on ln until it is closed. Each reader gets the
// ring, then live lines. What readers send is ignored.
func (s *Stream) Serve(ln net.Listener) error {
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		s.add(conn)
	}
}

func (s *Stream) add(conn net.Conn) {
	s.mu.Lock()
	if len(s.clients) >= MaxClients {
		s.refused++
		s.mu.Unlock()
		conn.Close()
		return
	}
	sink := NewSink(conn, DefaultSinkBytes)
	for _, l := range s.ring {
		_, _ = sink.Write(l)
	}
	s.clients[sink] = conn
	s.mu.Unlock()
	go func() {
		// The reader is done when it closes (read fails) or a write fails.
		gone := make(chan struct{})
		go func() {
			buf := make([]byte, 512)
			for {
				if _, err := conn.Read(buf); err != nil {
					close(gone)
					return
				}
			}
		}()
		select {
		case <-gone:
		case <-sink.Done():
		}
		s.mu.Lock()
		delete(s.clients, sink)
		s.dropped += sink.Dropped()
		s.mu.Unlock()
		conn.Close()
		sink.Close()
	}()
}

// Close disconnects all readers.
func (s *Stream) Close() {
	s.mu.Lock()
	conns := make([]net.Conn, 0, len(s.clients))
	for _, c := range s.clients {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}
