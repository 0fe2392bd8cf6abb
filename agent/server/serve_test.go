package server

import (
	"context"
	"net"
	"path/filepath"
	"testing"

	"github.com/containerd/ttrpc"
)

// serveUnix serves s on a unix socket in the test's temporary directory
// until the test ends, when it closes s and checks that Serve returned nil.
// Each call of dial connects a new ttrpc client, closed when the test ends
// (before s is).
func serveUnix(t *testing.T, s *Server) (dial func() *ttrpc.Client) {
	t.Helper()
	l, err := Listen("unix://" + filepath.Join(t.TempDir(), "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return func() *ttrpc.Client {
		conn, err := net.Dial("unix", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c := ttrpc.NewClient(conn)
		t.Cleanup(func() { c.Close() })
		return c
	}
}
