package vhostuser

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"sync"
)

// Server accepts front-end connections on a Unix socket and serves them
// one at a time (a vhost-user device has one front-end).
type Server struct {
	ln   *net.UnixListener
	path string
	b    Backend
	log  *slog.Logger

	mu     sync.Mutex
	cur    *net.UnixConn
	closed bool
	done   chan struct{}
}

// Listen creates the socket at path (replacing a stale socket, never any
// other kind of file) so a front-end can connect as soon as it returns,
// and serves b on it in the background.
func Listen(path string, b Backend, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("unable to listen on %s: exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("unable to remove stale socket: %w", err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("unable to listen on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	s := &Server{ln: ln, path: path, b: b, log: log, done: make(chan struct{})}
	go s.serve()
	return s, nil
}

func (s *Server) serve() {
	defer close(s.done)
	for {
		uc, err := s.ln.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Error("vhost-user accept failed", "err", err)
			}
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			uc.Close()
			return
		}
		s.cur = uc
		s.mu.Unlock()
		s.log.Debug("vhost-user front-end connected")
		if err := ServeConn(uc, s.b, s.log); err != nil {
			s.log.Error("vhost-user session ended", "err", err)
		} else {
			s.log.Debug("vhost-user front-end disconnected")
		}
		uc.Close()
		s.mu.Lock()
		s.cur = nil
		s.mu.Unlock()
	}
}

// Close stops accepting, ends the current session (stopping and resetting
// the back-end), removes the socket file and waits for all of it.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	if s.cur != nil {
		s.cur.Close()
	}
	s.mu.Unlock()
	err := s.ln.Close()
	<-s.done
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("unable to close vhost-user listener: %w", err)
	}
	return nil
}
