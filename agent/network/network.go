// Package network configures the network namespace the sandbox's containers
// live in, the way Kata's runtime describes it before CreateSandbox:
// interfaces (found by MAC, renamed, addressed, brought up), routes of the
// links it manages, permanent ARP neighbours and iptables rules.
//
// It speaks rtnetlink through github.com/vishvananda/netlink with one
// explicit netlink.Handle opened in the configured namespace (never the
// package-global handle). It knows nothing of protobuf; agent/networks
// adapts it to the ttrpc AgentService.
//
// Every change is all or nothing: UpdateInterface, UpdateRoutes and
// AddARPNeighbors read the state they are about to change first and put it
// back when a step fails, so a bad request never leaves a half-configured
// link or routing table behind.
package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"github.com/keelvm/keel/agent/errdefs"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Sentinel errors; the RPC edge maps them to gRPC codes.
var (
	// ErrInvalid: the request is malformed or cannot apply (InvalidArgument).
	ErrInvalid = errdefs.New(errdefs.ErrInvalidArgument, "invalid argument")
	// ErrLinkNotFound: no link matches. Its text contains "Link not found",
	// which Kata's runtime retries on while a hot-plugged NIC appears (it
	// must keep that exact text).
	ErrLinkNotFound = errdefs.New(errdefs.ErrNotFound, "Link not found")
	// ErrMissingBinary: an external tool (iptables-save, ...) is not
	// installed in the guest (FailedPrecondition).
	ErrMissingBinary = errdefs.New(errdefs.ErrFailedPrecondition, "binary not found")
)

// Limits on what one request may ask for: memory grows with what was asked.
const (
	MaxAddresses = 64   // addresses per interface
	MaxRoutes    = 1024 // routes per UpdateRoutes
	MaxNeighbors = 1024 // neighbours per AddARPNeighbors
	MinMTU       = 68   // IPv4's minimum (RFC 791)
	MaxMTU       = 65535
	// MaxNameLen is IFNAMSIZ-1: the kernel's limit on link names.
	MaxNameLen = 15
	// DefaultDeviceTimeout bounds the wait for a hot-plugged NIC when the
	// caller's context has no earlier deadline (agent.hotplug_timeout).
	DefaultDeviceTimeout = 3 * time.Second
)

// Interface is a link as the runtime describes it (Kata's types.Interface).
type Interface struct {
	// Device is the link's current name, a fallback when HwAddr matches no link.
	Device string
	// Name is the name the link gets (and, when no link has HwAddr, the
	// second fallback to find it, whose MAC is then set to HwAddr).
	Name string
	// Addrs replaces the link's addresses (IPv6 link-local ones are kept).
	Addrs []netip.Prefix
	MTU   int
	// HwAddr finds the link (the reliable key: the runtime knows the MAC).
	HwAddr net.HardwareAddr
	// DevicePath is the NIC's PCI path (e.g. "02/01"); when set the link
	// is waited for (hot-plug) before anything else.
	DevicePath string
	// RawFlags are IFF_* flags; only IFF_NOARP is applied (as Kata).
	RawFlags uint32
	// Type is the link type (veth, tap, ...), reported by ListInterfaces.
	Type string
}

// Route is one route of the main table on a managed link.
type Route struct {
	// Dest is the destination; the zero Prefix means the default route of Family.
	Dest    netip.Prefix
	Gateway netip.Addr // zero: a direct route
	Device  string
	Source  netip.Addr // preferred source address (RTA_PREFSRC); zero: none
	Scope   uint8      // RT_SCOPE_*: 0 universe, 253 link, 254 host
	IPv6    bool
	Flags   uint32 // RTNH_F_* (e.g. onlink)
	MTU     uint32 // route MTU metric, 0 = none
}

// Neighbor is a static neighbour entry (Kata's types.ARPNeighbor).
type Neighbor struct {
	IP     netip.Addr
	Device string
	Lladdr net.HardwareAddr // empty: none
	State  uint16           // NUD_*; 0 means NUD_PERMANENT
	Flags  uint8            // NTF_*
}

// DeviceWaiter waits for the network device at a PCI path (the guest's
// uevent registry implements it). It returns the device's link name.
type DeviceWaiter interface {
	WaitNetDevice(ctx context.Context, devicePath string) (string, error)
}

// Config configures a Network.
type Config struct {
	// NetNS is the path of the network namespace to configure (e.g.
	// /var/run/netns/x); "" is the agent's own, where containers live.
	NetNS string
	// Devices waits for hot-plugged NICs by PCI path; nil polls for the
	// link by MAC until the deadline instead.
	Devices DeviceWaiter
	// DeviceTimeout bounds that wait; 0 = DefaultDeviceTimeout.
	DeviceTimeout time.Duration
	// ToolDirs are searched for iptables-save & co; nil = /usr/sbin, /sbin
	// (Kata's two places), then $PATH.
	ToolDirs []string
	Log      *slog.Logger
}

// Network configures one network namespace. Its methods are safe for
// concurrent use: changes are serialised (each takes milliseconds).
type Network struct {
	cfg Config
	log *slog.Logger
	ns  netns.NsHandle // -1 when cfg.NetNS == ""
	h   *netlink.Handle

	mu sync.Mutex // serialises changes and their rollbacks
}

// New opens a netlink handle in cfg.NetNS.
func New(cfg Config) (*Network, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.DeviceTimeout <= 0 {
		cfg.DeviceTimeout = DefaultDeviceTimeout
	}
	n := &Network{cfg: cfg, log: cfg.Log, ns: netns.None()}
	var err error
	// Only NETLINK_ROUTE: without families the handle would also open
	// NETLINK_XFRM and NETLINK_NETFILTER sockets, which a guest kernel
	// without those modules refuses (EPROTONOSUPPORT).
	if cfg.NetNS == "" {
		n.h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	} else {
		n.ns, err = netns.GetFromPath(cfg.NetNS)
		if err != nil {
			return nil, fmt.Errorf("unable to open network namespace %s: %w", cfg.NetNS, err)
		}
		n.h, err = netlink.NewHandleAt(n.ns, unix.NETLINK_ROUTE)
	}
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("unable to open a netlink socket: %w", err)
	}
	// A netlink reply never takes long; a stuck socket must not hang an RPC.
	if err := n.h.SetSocketTimeout(10 * time.Second); err != nil {
		n.Close()
		return nil, fmt.Errorf("unable to set the netlink socket timeout: %w", err)
	}
	return n, nil
}

// Close releases the netlink socket and the namespace handle.
func (n *Network) Close() error {
	if n.h != nil {
		n.h.Close()
	}
	if n.ns.IsOpen() {
		n.ns.Close()
	}
	return nil
}

// inNetNS runs fn on a thread switched into the configured namespace (for
// external commands, which inherit the thread's namespace). The thread is
// never switched back: it dies with the goroutine, so no other goroutine
// ever runs in the wrong namespace.
func (n *Network) inNetNS(fn func() error) error {
	if !n.ns.IsOpen() {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // no Unlock: the thread exits with the goroutine
		if err := netns.Set(n.ns); err != nil {
			errc <- fmt.Errorf("unable to enter network namespace %s: %w", n.cfg.NetNS, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// retryDump repeats a netlink dump the kernel reports as interrupted (the
// table changed while it was read), a bounded number of times.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var out []T
	var err error
	for range 5 {
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return out, err
}

// linkByMAC finds the link whose hardware address is mac.
func (n *Network) linkByMAC(mac net.HardwareAddr) (netlink.Link, error) {
	links, err := retryDump(n.h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("unable to list links: %w", err)
	}
	for _, l := range links {
		if a := l.Attrs().HardwareAddr; len(a) == len(mac) && a.String() == mac.String() {
			return l, nil
		}
	}
	return nil, fmt.Errorf("%w (Address: %s)", ErrLinkNotFound, mac)
}

// linkByName finds a link by name, ErrLinkNotFound when there is none.
func (n *Network) linkByName(name string) (netlink.Link, error) {
	l, err := n.h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("%w (Name: %s)", ErrLinkNotFound, name)
		}
		return nil, fmt.Errorf("unable to find link %q: %w", name, err)
	}
	return l, nil
}

// deadline derives the wait for a hot-plugged device from ctx.
func (n *Network) deadline(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, n.cfg.DeviceTimeout)
}
