// Package client is the host side of the Keel agent API: it dials the agent
// over AF_VSOCK, hybrid vsock (Firecracker / Cloud Hypervisor Unix socket
// with a "CONNECT PORT" handshake) or a Unix socket, and returns typed
// ttrpc clients for grpc.AgentService and grpc.Health.
//
// Hosts commonly dial before the guest's agent listens, so every dial is
// retried with a short, capped backoff until the context ends; the cap is
// small on purpose, so a late listener costs at most one backoff step
// (Kata runtime#1917 lost ~2 s here).
//
// This package imports neither libcontainer nor cgo, so a host runtime can
// link it cheaply.
package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/keelvm/keel/protocol/addr"
)

// Backoff and handshake limits.
const (
	// FirstBackoff is the wait after the first failed attempt.
	FirstBackoff = 5 * time.Millisecond
	// MaxBackoff caps the wait between attempts.
	MaxBackoff = 100 * time.Millisecond
	// HandshakeTimeout bounds one hybrid-vsock CONNECT exchange, as Kata does.
	HandshakeTimeout = 10 * time.Second
	// MaxHandshakeLine bounds the reply line of a hybrid-vsock device.
	MaxHandshakeLine = 128
)

// ErrHandshake is wrapped when a hybrid-vsock device answers CONNECT with
// anything but an "OK" line, or hangs up.
var ErrHandshake = errors.New("hybrid vsock handshake failed")

// DialError says which address could not be reached, after how many
// attempts, and the last reason.
type DialError struct {
	Addr     string
	Attempts int
	Err      error
}

func (e *DialError) Error() string {
	return fmt.Sprintf("unable to reach agent at %s after %d attempt(s): %v", e.Addr, e.Attempts, e.Err)
}

func (e *DialError) Unwrap() error { return e.Err }

// DialConn connects to address (see package addr for the forms), retrying
// transient failures until ctx is done. Permanent failures (a malformed
// address, a transport this host lacks) return at once.
func DialConn(ctx context.Context, address string) (net.Conn, error) {
	a, err := addr.Parse(address)
	if err != nil {
		return nil, &DialError{Addr: address, Err: err}
	}
	return DialAddr(ctx, a)
}

// DialAddr is DialConn for a parsed address.
func DialAddr(ctx context.Context, a addr.Address) (net.Conn, error) {
	wait := FirstBackoff
	var reason error // the last failure not caused by ctx ending
	for attempt := 1; ; attempt++ {
		conn, err := dialOnce(ctx, a)
		if err == nil {
			return conn, nil
		}
		if permanent(err) {
			return nil, &DialError{Addr: a.String(), Attempts: attempt, Err: err}
		}
		if !cutShort(ctx) || reason == nil {
			// An attempt cut short by the deadline says only that
			// time ran out: keep the reason the earlier ones failed.
			reason = err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, &DialError{Addr: a.String(), Attempts: attempt, Err: fmt.Errorf("%w (last error: %v)", ctx.Err(), reason)}
		case <-t.C:
		}
		wait = min(wait*2, MaxBackoff)
	}
}

// cutShort reports whether ctx has ended or its deadline has passed: a
// dial bounded by the deadline can fail with "i/o timeout" a moment
// before ctx's own timer marks it done.
func cutShort(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

func dialOnce(ctx context.Context, a addr.Address) (net.Conn, error) {
	switch a.Scheme {
	case addr.Unix:
		var d net.Dialer
		return d.DialContext(ctx, "unix", a.Path)
	case addr.HVSock:
		c, _, err := DialHybrid(ctx, a.Path, a.Port)
		if err != nil {
			return nil, err
		}
		return c, nil
	case addr.VSock:
		if a.CID == addr.AnyCID {
			return nil, permanentError{fmt.Errorf("cannot dial CID -1 (any): name the guest's CID")}
		}
		return dialVsock(ctx, a.CID, a.Port)
	}
	return nil, permanentError{fmt.Errorf("unknown scheme %q", a.Scheme)}
}

// dialVsock runs the blocking AF_VSOCK connect in a goroutine so that the
// context still bounds it.
func dialVsock(ctx context.Context, cid, port uint32) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := vsock.Dial(cid, port, nil)
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil && errors.Is(r.err, syscall.EAFNOSUPPORT) {
			return nil, permanentError{fmt.Errorf("this host has no AF_VSOCK support: %w", r.err)}
		}
		return r.c, r.err
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// DialHybrid makes one hybrid-vsock connection, without retrying: it
// connects to the device's Unix socket at path, asks for the guest's port
// and returns the stream with the host-side port the device assigned
// ("OK <hostport>"; 0 when the device's OK line carries none). The reply is
// read byte by byte: bytes after the newline already belong to the guest's
// stream and must not be swallowed by a buffered reader.
func DialHybrid(ctx context.Context, path string, port uint32) (*net.UnixConn, uint32, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, 0, err
	}
	uc := conn.(*net.UnixConn)
	deadline := time.Now().Add(HandshakeTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = uc.SetDeadline(deadline)
	hostPort, err := handshake(uc, port)
	if err != nil {
		uc.Close()
		return nil, 0, err
	}
	_ = uc.SetDeadline(time.Time{})
	return uc, hostPort, nil
}

// handshake sends CONNECT and accepts any reply line starting with "OK",
// as Firecracker's clients do; the host port after it is optional.
func handshake(rw io.ReadWriter, port uint32) (uint32, error) {
	if _, err := fmt.Fprintf(rw, "CONNECT %d\n", port); err != nil {
		return 0, fmt.Errorf("%w: sending CONNECT %d: %v", ErrHandshake, port, err)
	}
	line, err := readLine(rw)
	if err != nil {
		return 0, fmt.Errorf("%w: waiting for the reply to CONNECT %d: %v", ErrHandshake, port, err)
	}
	if !strings.HasPrefix(line, "OK") {
		return 0, fmt.Errorf("%w: CONNECT %d answered %q, want \"OK <port>\"", ErrHandshake, port, line)
	}
	var hostPort uint32
	if f := strings.Fields(line); len(f) == 2 && f[0] == "OK" {
		if p, err := strconv.ParseUint(f[1], 10, 32); err == nil {
			hostPort = uint32(p)
		}
	}
	return hostPort, nil
}

func readLine(r io.Reader) (string, error) {
	var b strings.Builder
	one := make([]byte, 1)
	for b.Len() < MaxHandshakeLine {
		if _, err := io.ReadFull(r, one); err != nil {
			if errors.Is(err, io.EOF) {
				return b.String(), errors.New("connection closed by the device (is the guest listening?)")
			}
			return b.String(), err
		}
		if one[0] == '\n' {
			return b.String(), nil
		}
		b.WriteByte(one[0])
	}
	return b.String(), fmt.Errorf("reply longer than %d bytes", MaxHandshakeLine)
}

// permanentError marks failures that retrying cannot fix.
type permanentError struct{ error }

func (p permanentError) Unwrap() error { return p.error }

func permanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}
