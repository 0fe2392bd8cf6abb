// Package addr parses the agent addresses shared by the agent's listener and
// the host client: "vsock://CID:PORT", "hvsock:///path/to/uds:PORT" and
// "unix:///path".
//
// The forms follow Kata's agent.server_addr ("vsock://-1:1024": CID -1 means
// any CID when listening) and Firecracker / Cloud Hypervisor hybrid vsock,
// where the host reaches a guest port through a Unix socket and a
// "CONNECT PORT\n" handshake.
package addr

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Scheme names a transport.
type Scheme string

// Transports an address can name.
const (
	VSock  Scheme = "vsock"  // AF_VSOCK: CID and port
	HVSock Scheme = "hvsock" // hybrid vsock: Unix socket + CONNECT handshake
	Unix   Scheme = "unix"   // plain Unix stream socket
)

// AnyCID is the CID a listener binds to accept from any peer (VMADDR_CID_ANY).
const AnyCID = math.MaxUint32

// ErrInvalid is wrapped by every parse error.
var ErrInvalid = errors.New("invalid agent address")

// Address is a parsed agent address.
type Address struct {
	Scheme Scheme
	CID    uint32 // vsock only; AnyCID for "-1"
	Port   uint32 // vsock and hvsock
	Path   string // unix and hvsock: the Unix socket path
}

// String renders the address in the form Parse accepts.
func (a Address) String() string {
	switch a.Scheme {
	case VSock:
		cid := strconv.FormatUint(uint64(a.CID), 10)
		if a.CID == AnyCID {
			cid = "-1"
		}
		return fmt.Sprintf("vsock://%s:%d", cid, a.Port)
	case HVSock:
		return fmt.Sprintf("hvsock://%s:%d", a.Path, a.Port)
	case Unix:
		return "unix://" + a.Path
	}
	return fmt.Sprintf("%s://?", a.Scheme)
}

// Parse parses an address. Errors wrap ErrInvalid and quote the input.
func Parse(s string) (Address, error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return Address{}, invalid(s, `missing "scheme://" (want vsock://CID:PORT, hvsock:///uds:PORT or unix:///path)`)
	}
	switch Scheme(scheme) {
	case VSock:
		host, portStr, ok := strings.Cut(rest, ":")
		if !ok || strings.Contains(portStr, ":") {
			return Address{}, invalid(s, "want vsock://CID:PORT")
		}
		var cid uint32
		if host == "-1" {
			cid = AnyCID
		} else {
			c, err := strconv.ParseUint(host, 10, 32)
			if err != nil {
				return Address{}, invalid(s, fmt.Sprintf("CID %q is not -1 or a number below 2^32", host))
			}
			cid = uint32(c)
		}
		port, err := parsePort(portStr)
		if err != nil {
			return Address{}, invalid(s, err.Error())
		}
		return Address{Scheme: VSock, CID: cid, Port: port}, nil
	case HVSock:
		i := strings.LastIndexByte(rest, ':')
		if i < 0 {
			return Address{}, invalid(s, "want hvsock:///path/to/uds:PORT")
		}
		path, portStr := rest[:i], rest[i+1:]
		if err := checkPath(path); err != nil {
			return Address{}, invalid(s, err.Error())
		}
		port, err := parsePort(portStr)
		if err != nil {
			return Address{}, invalid(s, err.Error())
		}
		return Address{Scheme: HVSock, Path: path, Port: port}, nil
	case Unix:
		if err := checkPath(rest); err != nil {
			return Address{}, invalid(s, err.Error())
		}
		return Address{Scheme: Unix, Path: rest}, nil
	}
	return Address{}, invalid(s, fmt.Sprintf("unknown scheme %q (want vsock, hvsock or unix)", scheme))
}

func parsePort(s string) (uint32, error) {
	p, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("port %q is not a number below 2^32", s)
	}
	return uint32(p), nil
}

// checkPath insists on absolute socket paths: a relative one would depend on
// the working directory of whichever process dials.
func checkPath(p string) error {
	switch {
	case p == "":
		return errors.New("empty socket path")
	case !strings.HasPrefix(p, "/"):
		return fmt.Errorf("socket path %q is not absolute", p)
	case strings.ContainsRune(p, 0):
		return errors.New("socket path contains a NUL byte")
	}
	return nil
}

func invalid(s, why string) error {
	return fmt.Errorf("%w %q: %s", ErrInvalid, s, why)
}
