// Package passfd is the host side of Kata's passthrough-fd stdio fast path:
// it opens the per-stream connections to the agent's passfd port and
// returns the port number to put in CreateContainerRequest/ExecProcessRequest
// stdin_port, stdout_port and stderr_port.
//
// The agent identifies a connection by its peer port, i.e. the host end's
// port. How the host learns it depends on the transport:
//
//   - AF_VSOCK (vsock://CID:PORT): the local address of the connection.
//   - Hybrid vsock (hvsock://PATH:PORT, Firecracker and Cloud Hypervisor):
//     the device answers "CONNECT <port>\n" with "OK <hostport>\n".
//   - Dragonball's fd passing (PassFD): the runtime sends "passfd\n", then
//     "<port> keep" with the FIFO's descriptor attached (SCM_RIGHTS); the VMM
//     relays the FIFO itself and answers "OK <hostport>\n".
//
// This package imports neither agent code, libcontainer nor cgo.
package passfd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/keelvm/keel/protocol/addr"
	"github.com/keelvm/keel/protocol/client"
)

// DefaultPort is Kata's default agent.passfd_listener_port.
const DefaultPort = 1027

// Handshake limits.
const (
	// HandshakeTimeout bounds one CONNECT or passfd exchange (as Kata's 10 s).
	HandshakeTimeout = 10 * time.Second
	// MaxReplyLine bounds the device's reply line.
	MaxReplyLine = 128
)

// ErrHandshake is wrapped when the device's reply is not "OK <port>".
var ErrHandshake = errors.New("passfd handshake failed")

// Dial opens one stream connection to the agent's passfd listener at
// address (vsock://CID:PORT or hvsock://PATH:PORT) and returns it with the
// port the agent will see. Write stdin bytes to it or read stdout bytes from
// it; the agent half-closes it at the process's EOF.
func Dial(ctx context.Context, address string) (net.Conn, uint32, error) {
	a, err := addr.Parse(address)
	if err != nil {
		return nil, 0, fmt.Errorf("passfd: %w", err)
	}
	switch a.Scheme {
	case addr.VSock:
		c, err := client.DialAddr(ctx, a)
		if err != nil {
			return nil, 0, err
		}
		port, err := LocalPort(c)
		if err != nil {
			c.Close()
			return nil, 0, err
		}
		return c, port, nil
	case addr.HVSock:
		c, hostPort, err := client.DialHybrid(ctx, a.Path, a.Port)
		if err != nil {
			return nil, 0, fmt.Errorf("%w: %v", ErrHandshake, err)
		}
		if hostPort == 0 {
			c.Close()
			return nil, 0, fmt.Errorf("%w: the device's OK carried no host port, which the agent needs to match the stream", ErrHandshake)
		}
		return c, hostPort, nil
	}
	return nil, 0, fmt.Errorf("passfd: address %q: scheme %q cannot carry passfd streams (want vsock or hvsock)", address, a.Scheme)
}

// LocalPort returns the port of the host end of a vsock connection dialled
// by other means (e.g. a caller's own dialer): the value for *_port.
func LocalPort(c net.Conn) (uint32, error) {
	la, ok := c.LocalAddr().(*vsock.Addr)
	if !ok {
		return 0, fmt.Errorf("passfd: local address %v is not vsock", c.LocalAddr())
	}
	return la.Port, nil
}

// PassFD hands f (the container's stdio FIFO or any stream file) to a
// Dragonball VMM listening on the Unix socket udsPath; the VMM connects to
// the agent's port and relays f. keep asks the VMM to keep the guest
// connection when the host side of f is closed, so the stream can be
// re-attached (Kata sends it for every stream). The caller may close f
// afterwards: the VMM holds its own copy.
func PassFD(ctx context.Context, udsPath string, agentPort uint32, f *os.File, keep bool) (uint32, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", udsPath)
	if err != nil {
		return 0, fmt.Errorf("passfd: %w", err)
	}
	defer c.Close()
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, fmt.Errorf("passfd: %s is not a unix socket", udsPath)
	}
	setDeadline(ctx, c)
	if _, err := io.WriteString(c, "passfd\n"); err != nil {
		return 0, fmt.Errorf("%w: %v", ErrHandshake, err)
	}
	msg := strconv.FormatUint(uint64(agentPort), 10)
	if keep {
		msg += " keep"
	}
	rights := unixRights(f)
	if rights == nil {
		return 0, fmt.Errorf("passfd: file %s has no descriptor", f.Name())
	}
	_, _, err = uc.WriteMsgUnix([]byte(msg), rights, nil)
	runtime.KeepAlive(f) // rights names f's descriptor
	if err != nil {
		return 0, fmt.Errorf("%w: sending port and descriptor: %v", ErrHandshake, err)
	}
	return readOK(c)
}

// setDeadline bounds the passfd exchange by HandshakeTimeout and ctx.
func setDeadline(ctx context.Context, c net.Conn) {
	deadline := time.Now().Add(HandshakeTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	c.SetDeadline(deadline)
}

// readOK reads "OK <port>\n" byte by byte: later bytes belong to the
// stream and must stay unread.
func readOK(r io.Reader) (uint32, error) {
	var b strings.Builder
	one := make([]byte, 1)
	for {
		if b.Len() >= MaxReplyLine {
			return 0, fmt.Errorf("%w: reply longer than %d bytes", ErrHandshake, MaxReplyLine)
		}
		if _, err := io.ReadFull(r, one); err != nil {
			return 0, fmt.Errorf("%w: reading reply: %v", ErrHandshake, err)
		}
		if one[0] == '\n' {
			break
		}
		b.WriteByte(one[0])
	}
	return ParseReply(b.String())
}

// ParseReply parses a device reply line (without its newline) of the form
// "OK <port>" and returns the port, which must be non-zero.
func ParseReply(line string) (uint32, error) {
	fields := strings.Fields(line)
	if len(fields) != 2 || fields[0] != "OK" {
		return 0, fmt.Errorf("%w: reply %q, want \"OK <port>\"", ErrHandshake, line)
	}
	p, err := strconv.ParseUint(fields[1], 10, 32)
	if err != nil || p == 0 {
		return 0, fmt.Errorf("%w: reply %q: bad port", ErrHandshake, line)
	}
	return uint32(p), nil
}
