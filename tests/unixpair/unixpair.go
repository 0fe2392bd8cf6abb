// Package unixpair gives tests a connected pair of unix stream sockets made
// through a real listener (so each end has the addresses, credentials and
// splice behaviour of an accepted connection, unlike socketpair(2)).
package unixpair

import (
	"net"
	"path/filepath"
	"testing"
)

// New returns the accepted and the dialled end of one connection over a
// listener in a temporary directory; both are closed when t ends.
func New(t testing.TB) (accepted, dialled *net.UnixConn) {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := l.Accept()
		ch <- res{c, err}
	}()
	d, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		d.Close()
		t.Fatal(r.err)
	}
	t.Cleanup(func() { d.Close(); r.c.Close() })
	return r.c.(*net.UnixConn), d.(*net.UnixConn)
}
