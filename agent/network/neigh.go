package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// AddARPNeighbors adds (replaces) static neighbour entries, NUD_PERMANENT
// unless a state is given (Kata's AddARPNeighbors: the runtime copies the
// pod's neighbours so the guest need not ARP for its gateway). All or
// nothing: on failure the entries already written are put back as they were.
// Equivalent to: `ip neigh replace IP lladdr MAC dev DEV nud permanent`.
func (n *Network) AddARPNeighbors(neighs []Neighbor) error {
	if len(neighs) > MaxNeighbors {
		return fmt.Errorf("ARPNeighbors: %d, at most %d: %w", len(neighs), MaxNeighbors, ErrInvalid)
	}
	for i := range neighs {
		if err := neighs[i].Validate(); err != nil {
			return fmt.Errorf("ARPNeighbors[%d]: %w", i, err)
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	reqs := make([]*netlink.Neigh, len(neighs))
	for i, nb := range neighs {
		l, err := n.linkByName(nb.Device)
		if err != nil {
			return fmt.Errorf("ARPNeighbors[%d].device: %w", i, err)
		}
		reqs[i] = toNetlinkNeigh(nb, l.Attrs().Index)
	}
	type undo struct {
		req  *netlink.Neigh
		prev *netlink.Neigh // nil: there was no entry
	}
	var done []undo
	for i, req := range reqs {
		prev, err := n.neighbor(req)
		if err != nil {
			return err
		}
		if err := n.h.NeighSet(req); err != nil {
			err = fmt.Errorf("ARPNeighbors[%d] %s dev %s: unable to add it: %w", i, neighs[i].IP, neighs[i].Device, err)
			if errors.Is(err, unix.EINVAL) {
				err = fmt.Errorf("%w: %w", err, ErrInvalid)
			}
			var errs []error
			for j := len(done) - 1; j >= 0; j-- {
				u := done[j]
				if u.prev != nil {
					errs = append(errs, n.h.NeighSet(u.prev))
				} else if err := n.h.NeighDel(u.req); err != nil && !errors.Is(err, unix.ENOENT) {
					errs = append(errs, err)
				}
			}
			if rerr := errors.Join(errs...); rerr != nil {
				err = fmt.Errorf("%w (and the rollback failed: %v)", err, rerr)
			}
			return err
		}
		done = append(done, undo{req, prev})
	}
	return nil
}

// neighbor returns the entry for req's address on req's link, if any.
func (n *Network) neighbor(req *netlink.Neigh) (*netlink.Neigh, error) {
	list, err := retryDump(func() ([]netlink.Neigh, error) { return n.h.NeighList(req.LinkIndex, req.Family) })
	if err != nil {
		return nil, fmt.Errorf("unable to list neighbours: %w", err)
	}
	for i := range list {
		if list[i].IP.Equal(req.IP) {
			nb := list[i]
			return &nb, nil
		}
	}
	return nil, nil
}

// ListNeighbors lists the neighbour entries of a link (for tests and
// diagnostics). Equivalent to: `ip neigh show dev DEV`.
func (n *Network) ListNeighbors(device string) ([]Neighbor, error) {
	l, err := n.linkByName(device)
	if err != nil {
		return nil, err
	}
	list, err := retryDump(func() ([]netlink.Neigh, error) { return n.h.NeighList(l.Attrs().Index, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("unable to list neighbours: %w", err)
	}
	var out []Neighbor
	for _, nb := range list {
		a, ok := netip.AddrFromSlice(nb.IP)
		if !ok {
			continue
		}
		if nb.Family == netlink.FAMILY_V4 {
			a = a.Unmap()
		}
		out = append(out, Neighbor{IP: a, Device: device, Lladdr: nb.HardwareAddr, State: uint16(nb.State), Flags: uint8(nb.Flags)})
	}
	return out, nil
}

// toNetlinkNeigh is the netlink request for nb on link index (pure: fuzzed).
func toNetlinkNeigh(nb Neighbor, index int) *netlink.Neigh {
	state := int(nb.State)
	if state == 0 {
		state = netlink.NUD_PERMANENT
	}
	out := &netlink.Neigh{LinkIndex: index, State: state, Flags: int(nb.Flags), IP: net.IP(nb.IP.AsSlice()), Family: netlink.FAMILY_V4}
	if nb.IP.Is6() {
		out.Family = netlink.FAMILY_V6
	}
	if len(nb.Lladdr) != 0 {
		out.HardwareAddr = nb.Lladdr
	}
	return out
}

// NeighborRequest is the netlink request AddARPNeighbors sends for nb on
// the link with index linkIndex (exported for the fuzz test).
func NeighborRequest(nb Neighbor, linkIndex int) *netlink.Neigh { return toNetlinkNeigh(nb, linkIndex) }
