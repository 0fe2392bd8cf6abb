package networks

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/keelvm/keel/agent/network"
	"github.com/keelvm/keel/protocol/types"
)

// The From* functions turn protocol messages into the domain's types and
// reject what cannot be meant, naming the field relative to the message
// (the RPC prefixes the request field). They are pure, and fuzzed.

// FromInterface converts a types.Interface.
func FromInterface(in *types.Interface) (network.Interface, error) {
	if in == nil {
		return network.Interface{}, fmt.Errorf("missing: %w", network.ErrInvalid)
	}
	out := network.Interface{Device: in.Device, Name: in.Name, DevicePath: in.DevicePath, RawFlags: in.RawFlags, Type: in.Type}
	if in.Mtu > network.MaxMTU {
		return out, fmt.Errorf("mtu %d: must be within %d..%d: %w", in.Mtu, network.MinMTU, network.MaxMTU, network.ErrInvalid)
	}
	out.MTU = int(in.Mtu)
	if in.HwAddr != "" {
		mac, err := net.ParseMAC(in.HwAddr)
		if err != nil {
			return out, fmt.Errorf("hwAddr %q: not a MAC address: %w", in.HwAddr, network.ErrInvalid)
		}
		out.HwAddr = mac
	}
	if len(in.IPAddresses) > network.MaxAddresses {
		return out, fmt.Errorf("IPAddresses: %d, at most %d: %w", len(in.IPAddresses), network.MaxAddresses, network.ErrInvalid)
	}
	if strings.ContainsAny(in.DevicePath, "\x00\n") || len(in.DevicePath) > 256 {
		return out, fmt.Errorf("devicePath %q: not a PCI path: %w", in.DevicePath, network.ErrInvalid)
	}
	for i, a := range in.IPAddresses {
		p, err := fromIPAddress(a, true)
		if err != nil {
			return out, fmt.Errorf("IPAddresses[%d].%w", i, err)
		}
		out.Addrs = append(out.Addrs, p)
	}
	return out, out.Validate()
}

// fromIPAddress converts a types.IPAddress; withMask requires the prefix
// length (interface addresses), else mask must be empty or full length.
// Its errors start with the field name (family, address, mask).
func fromIPAddress(a *types.IPAddress, withMask bool) (netip.Prefix, error) {
	if a == nil {
		return netip.Prefix{}, fmt.Errorf("address: missing: %w", network.ErrInvalid)
	}
	v6, err := family(a.Family)
	if err != nil {
		return netip.Prefix{}, err
	}
	ip, err := netip.ParseAddr(a.Address)
	if err != nil || ip.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("address %q: not an IP address: %w", a.Address, network.ErrInvalid)
	}
	ip = ip.Unmap()
	if ip.Is6() != v6 {
		return netip.Prefix{}, fmt.Errorf("address %q: not an %s address: %w", a.Address, a.Family, network.ErrInvalid)
	}
	if !withMask && a.Mask == "" {
		return netip.PrefixFrom(ip, ip.BitLen()), nil
	}
	bits, err := strconv.Atoi(a.Mask)
	if err != nil || bits < 0 || bits > ip.BitLen() || (a.Mask != "0" && strings.HasPrefix(a.Mask, "0")) || strings.HasPrefix(a.Mask, "+") {
		return netip.Prefix{}, fmt.Errorf("mask %q: want a prefix length 0..%d: %w", a.Mask, ip.BitLen(), network.ErrInvalid)
	}
	return netip.PrefixFrom(ip, bits), nil
}

func family(f types.IPFamily) (v6 bool, err error) {
	switch f {
	case types.IPFamily_v4:
		return false, nil
	case types.IPFamily_v6:
		return true, nil
	}
	return false, fmt.Errorf("family %d: unknown (want 0 for v4 or 1 for v6): %w", int32(f), network.ErrInvalid)
}

// FromRoute converts a types.Route. dest "" (or "default") is the default
// route; a dest without a prefix length is a host route; source is the
// preferred source address (an address, or one with a full-length prefix).
func FromRoute(in *types.Route) (network.Route, error) {
	if in == nil {
		return network.Route{}, fmt.Errorf("missing: %w", network.ErrInvalid)
	}
	v6, err := family(in.Family)
	if err != nil {
		return network.Route{}, err
	}
	out := network.Route{Device: in.Device, IPv6: v6, Flags: in.Flags, MTU: in.Mtu}
	if in.Scope > math.MaxUint8 {
		return out, fmt.Errorf("scope %d: not an RT_SCOPE_* value: %w", in.Scope, network.ErrInvalid)
	}
	out.Scope = uint8(in.Scope)
	switch in.Dest {
	case "", "default":
	default:
		p, err := parsePrefixOrAddr(in.Dest)
		if err != nil {
			return out, fmt.Errorf("dest %q: not an address or CIDR: %w", in.Dest, network.ErrInvalid)
		}
		if p.Bits() > 0 {
			out.Dest = p // x/0 is the default route, whatever x is
		} else if p.Addr().Is6() != v6 {
			return out, fmt.Errorf("dest %q: family does not match the route's family: %w", in.Dest, network.ErrInvalid)
		}
	}
	if in.Gateway != "" {
		ip, err := netip.ParseAddr(in.Gateway)
		if err != nil || ip.Zone() != "" {
			return out, fmt.Errorf("gateway %q: not an IP address: %w", in.Gateway, network.ErrInvalid)
		}
		out.Gateway = ip.Unmap()
	}
	if in.Source != "" {
		p, err := parsePrefixOrAddr(in.Source)
		if err != nil || p.Bits() != p.Addr().BitLen() {
			return out, fmt.Errorf("source %q: not an address: %w", in.Source, network.ErrInvalid)
		}
		out.Source = p.Addr()
	}
	return out, out.Validate()
}

func parsePrefixOrAddr(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, err
		}
		if p.Addr().Is4In6() {
			return netip.Prefix{}, fmt.Errorf("IPv4-mapped prefix")
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("bad address")
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// FromNeighbor converts a types.ARPNeighbor.
func FromNeighbor(in *types.ARPNeighbor) (network.Neighbor, error) {
	if in == nil {
		return network.Neighbor{}, fmt.Errorf("missing: %w", network.ErrInvalid)
	}
	out := network.Neighbor{Device: in.Device}
	p, err := fromIPAddress(in.ToIPAddress, false)
	if err != nil {
		return out, fmt.Errorf("toIPAddress.%w", err)
	}
	if p.Bits() != p.Addr().BitLen() {
		return out, fmt.Errorf("toIPAddress.mask %q: a neighbour is one address: %w", in.ToIPAddress.Mask, network.ErrInvalid)
	}
	out.IP = p.Addr()
	if in.Lladdr != "" {
		mac, err := net.ParseMAC(in.Lladdr)
		if err != nil {
			return out, fmt.Errorf("lladdr %q: not a MAC address: %w", in.Lladdr, network.ErrInvalid)
		}
		out.Lladdr = mac
	}
	if in.State < 0 || in.State > 0xff {
		return out, fmt.Errorf("state %d: not NUD_* bits: %w", in.State, network.ErrInvalid)
	}
	if in.Flags < 0 || in.Flags > 0xff {
		return out, fmt.Errorf("flags %d: not NTF_* bits: %w", in.Flags, network.ErrInvalid)
	}
	out.State, out.Flags = uint16(in.State), uint8(in.Flags)
	return out, out.Validate()
}

// ToInterface converts back for replies.
func ToInterface(i network.Interface) *types.Interface {
	out := &types.Interface{Device: i.Device, Name: i.Name, Mtu: uint64(i.MTU), Type: i.Type, RawFlags: i.RawFlags}
	if len(i.HwAddr) != 0 {
		out.HwAddr = i.HwAddr.String()
	}
	for _, p := range i.Addrs {
		f := types.IPFamily_v4
		if p.Addr().Is6() {
			f = types.IPFamily_v6
		}
		out.IPAddresses = append(out.IPAddresses, &types.IPAddress{Family: f, Address: p.Addr().String(), Mask: strconv.Itoa(p.Bits())})
	}
	return out
}

// ToRoute converts back for replies; the default route has dest "".
func ToRoute(r network.Route) *types.Route {
	out := &types.Route{Device: r.Device, Scope: uint32(r.Scope), Flags: r.Flags, Mtu: r.MTU}
	if r.IPv6 {
		out.Family = types.IPFamily_v6
	}
	if r.Dest.IsValid() {
		out.Dest = r.Dest.String()
	}
	if r.Gateway.IsValid() {
		out.Gateway = r.Gateway.String()
	}
	if r.Source.IsValid() {
		out.Source = r.Source.String()
	}
	return out
}
