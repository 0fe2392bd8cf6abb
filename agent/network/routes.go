package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// UpdateRoutes makes routes the main-table routes of the links they name
// (the managed links), as Kata's UpdateRoutes: the links' other routes go,
// except the kernel's own (proto kernel: an address's subnet, IPv6
// link-local), and the new ones are added, routes without a gateway first
// so gateways are reachable when their routes come. Routes of other links
// are left alone. It returns the resulting main table (ListRoutes). It is
// transactional: when a route fails (say its gateway is unreachable), the
// managed links' routes are put back as they were and the error names the
// route by its index.
// Equivalent to: `ip route flush dev DEV proto boot; ip route replace ...`.
func (n *Network) UpdateRoutes(routes []Route) ([]Route, error) {
	if len(routes) > MaxRoutes {
		//lint:ignore ST1005 the field is named as in the protocol
		return nil, fmt.Errorf("Routes: %d, at most %d: %w", len(routes), MaxRoutes, ErrInvalid)
	}
	for i := range routes {
		if err := routes[i].Validate(); err != nil {
			//lint:ignore ST1005 the field is named as in the protocol
			return nil, fmt.Errorf("Routes[%d]: %w", i, err)
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	// Resolve every device before changing anything.
	links := map[string]int{}
	for i, r := range routes {
		if _, ok := links[r.Device]; ok {
			continue
		}
		l, err := n.linkByName(r.Device)
		if err != nil {
			//lint:ignore ST1005 the field is named as in the protocol
			return nil, fmt.Errorf("Routes[%d].device: %w", i, err)
		}
		links[r.Device] = l.Attrs().Index
	}
	managed := map[int]bool{}
	for _, idx := range links {
		managed[idx] = true
	}
	// The whole table is kept for the rollback: a replaced route (say the
	// default route) may have been another link's.
	before, err := n.mainRoutes(func(*netlink.Route) bool { return true })
	if err != nil {
		return nil, err
	}
	// Direct routes first: a gateway must be reachable when its route comes.
	order := make([]int, 0, len(routes))
	for i, r := range routes {
		if !r.Gateway.IsValid() {
			order = append(order, i)
		}
	}
	for i, r := range routes {
		if r.Gateway.IsValid() {
			order = append(order, i)
		}
	}
	err = func() error {
		for _, r := range before {
			if !managed[r.LinkIndex] || r.Protocol == unix.RTPROT_KERNEL {
				continue
			}
			if err := n.h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("unable to remove route %s: %w", routeString(r), err)
			}
		}
		for _, i := range order {
			nr := toNetlinkRoute(routes[i], links[routes[i].Device])
			if kernelHas(before, nr) {
				// The kernel's own subnet route, which CNI results list
				// too: replacing it would only change its protocol (and
				// for IPv6 add a second route with another metric).
				continue
			}
			if err := n.h.RouteReplace(nr); err != nil {
				return routeError(i, routes[i], err)
			}
		}
		return nil
	}()
	if err != nil {
		if rerr := n.restoreRoutes(before); rerr != nil {
			n.log.Error("network: rollback of a failed UpdateRoutes left changes", "err", rerr)
			err = fmt.Errorf("%w (and the rollback failed: %v)", err, rerr)
		}
		return nil, err
	}
	return n.listRoutes()
}

// kernelHas reports whether the kernel made r itself (proto kernel, same
// link, destination and preferred source, no gateway).
func kernelHas(table []netlink.Route, r *netlink.Route) bool {
	if r.Gw != nil {
		return false
	}
	for _, k := range table {
		if k.Protocol == unix.RTPROT_KERNEL && k.LinkIndex == r.LinkIndex && k.Family == r.Family && k.Gw == nil &&
			k.Dst != nil && k.Dst.String() == r.Dst.String() && (r.Src == nil || r.Src.Equal(k.Src)) {
			return true
		}
	}
	return false
}

// routeError explains why the kernel refused route i.
func routeError(i int, r Route, err error) error {
	desc := describeRoute(r)
	switch {
	case errors.Is(err, unix.ENETUNREACH):
		//lint:ignore ST1005 the field is named as in the protocol
		return fmt.Errorf("Routes[%d].gateway %s: unreachable from %s (no route or address covers it) for route %s: %v: %w", i, r.Gateway, r.Device, desc, err, ErrInvalid)
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.EADDRNOTAVAIL), errors.Is(err, unix.ENODEV):
		//lint:ignore ST1005 the field is named as in the protocol
		return fmt.Errorf("Routes[%d] %s: refused by the kernel: %v: %w", i, desc, err, ErrInvalid)
	}
	//lint:ignore ST1005 the field is named as in the protocol
	return fmt.Errorf("Routes[%d] %s: unable to add it: %w", i, desc, err)
}

func describeRoute(r Route) string {
	s := "default"
	if r.Dest.IsValid() {
		s = r.Dest.String()
	}
	if r.Gateway.IsValid() {
		s += " via " + r.Gateway.String()
	}
	return s + " dev " + r.Device
}

func routeString(r netlink.Route) string {
	s := "default"
	if r.Dst != nil {
		s = r.Dst.String()
	}
	if r.Gw != nil {
		s += " via " + r.Gw.String()
	}
	return fmt.Sprintf("%s dev#%d", s, r.LinkIndex)
}

// restoreRoutes puts the main table back to before: what is there now and
// was not before goes, then before's routes are replaced in, direct ones
// first.
func (n *Network) restoreRoutes(before []netlink.Route) error {
	now, err := n.mainRoutes(func(*netlink.Route) bool { return true })
	if err != nil {
		return err
	}
	var errs []error
	was := map[string]bool{}
	for _, r := range before {
		was[routeKey(r)] = true
	}
	same := map[string]bool{}
	for _, r := range now {
		for _, b := range before {
			if routeKey(b) == routeKey(r) && b.Equal(r) && b.Protocol == r.Protocol {
				same[routeKey(r)] = true
			}
		}
		if !was[routeKey(r)] {
			if err := n.h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("unable to remove route %s: %w", routeString(r), err))
			}
		}
	}
	sorted := slices.Clone(before)
	slices.SortStableFunc(sorted, func(a, b netlink.Route) int {
		return boolInt(a.Gw != nil) - boolInt(b.Gw != nil)
	})
	for _, r := range sorted {
		if same[routeKey(r)] {
			continue
		}
		if err := n.h.RouteReplace(&r); err != nil {
			errs = append(errs, fmt.Errorf("unable to restore route %s: %w", routeString(r), err))
		}
	}
	return errors.Join(errs...)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// routeKey identifies a route in the main table the way the kernel does
// for replace: family, destination, metric (tos and priority are 0 here).
func routeKey(r netlink.Route) string {
	dst := "default"
	if r.Dst != nil {
		dst = r.Dst.String()
	}
	return fmt.Sprintf("%d %s %d %d", r.Family, dst, r.Priority, r.LinkIndex)
}

// mainRoutes lists the main table's unicast routes (IPv4 and IPv6) that keep says yes to.
func (n *Network) mainRoutes(keep func(*netlink.Route) bool) ([]netlink.Route, error) {
	filter := &netlink.Route{Table: unix.RT_TABLE_MAIN}
	var out []netlink.Route
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := retryDump(func() ([]netlink.Route, error) {
			return n.h.RouteListFiltered(fam, filter, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			if fam == netlink.FAMILY_V6 && errors.Is(err, unix.EAFNOSUPPORT) {
				continue // a kernel without IPv6
			}
			return nil, fmt.Errorf("unable to list routes: %w", err)
		}
		for i := range rs {
			if rs[i].Type != unix.RTN_UNICAST || !keep(&rs[i]) {
				continue
			}
			rs[i].Family = fam
			out = append(out, rs[i])
		}
	}
	return out, nil
}

// ListRoutes lists the main table's routes (Kata's ListRoutes).
// Equivalent to: `ip route show table main; ip -6 route show table main`.
func (n *Network) ListRoutes() ([]Route, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.listRoutes()
}

func (n *Network) listRoutes() ([]Route, error) {
	rs, err := n.mainRoutes(func(*netlink.Route) bool { return true })
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	out := make([]Route, 0, len(rs))
	for _, r := range rs {
		name, ok := names[r.LinkIndex]
		if !ok {
			if l, err := n.h.LinkByIndex(r.LinkIndex); err == nil {
				name = l.Attrs().Name
			}
			names[r.LinkIndex] = name
		}
		out = append(out, fromNetlinkRoute(r, name))
	}
	return out, nil
}

// toNetlinkRoute is the netlink request for r on link index (pure: fuzzed).
func toNetlinkRoute(r Route, index int) *netlink.Route {
	nr := &netlink.Route{
		LinkIndex: index,
		Table:     unix.RT_TABLE_MAIN,
		Type:      unix.RTN_UNICAST,
		Protocol:  unix.RTPROT_BOOT,
		Scope:     netlink.Scope(r.Scope),
		Flags:     int(r.Flags & routeFlagsApplied),
		MTU:       int(r.MTU),
		Family:    netlink.FAMILY_V4,
	}
	if r.IPv6 {
		nr.Family = netlink.FAMILY_V6
	}
	if r.Dest.IsValid() {
		nr.Dst = prefixToIPNet(r.Dest)
	} else if r.IPv6 {
		nr.Dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	} else {
		nr.Dst = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	}
	if r.Gateway.IsValid() {
		nr.Gw = net.IP(r.Gateway.AsSlice())
	}
	if r.Source.IsValid() {
		nr.Src = net.IP(r.Source.AsSlice())
	}
	return nr
}

// fromNetlinkRoute is the Route a kernel route reads as.
func fromNetlinkRoute(r netlink.Route, device string) Route {
	out := Route{Device: device, Scope: uint8(r.Scope), IPv6: r.Family == netlink.FAMILY_V6,
		Flags: uint32(r.Flags), MTU: uint32(r.MTU)}
	if p, ok := ipNetToPrefix(r.Dst); ok && p.Bits() > 0 {
		out.Dest = p
	}
	if a, ok := netip.AddrFromSlice(r.Gw); ok && r.Gw != nil {
		out.Gateway = unmapIf(a, !out.IPv6)
	}
	if a, ok := netip.AddrFromSlice(r.Src); ok && r.Src != nil {
		out.Source = unmapIf(a, !out.IPv6)
	}
	return out
}

func unmapIf(a netip.Addr, v4 bool) netip.Addr {
	if v4 {
		return a.Unmap()
	}
	return a
}

// RouteRequest is the netlink request UpdateRoutes sends for r on the link
// with index linkIndex (exported for the protocol conversion's fuzz test).
func RouteRequest(r Route, linkIndex int) *netlink.Route { return toNetlinkRoute(r, linkIndex) }

// RouteFromNetlink is how ListRoutes reports a kernel route on device.
func RouteFromNetlink(r netlink.Route, device string) Route { return fromNetlinkRoute(r, device) }
