package network

import (
	"fmt"
	"strings"
)

// Field names in the errors are the protocol's (types.Interface, types.Route,
// types.ARPNeighbor), so the RPC edge only prefixes where the value came from.

// ValidLinkName checks a link name the way the kernel's dev_valid_name does.
func ValidLinkName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty link name: %w", ErrInvalid)
	case len(name) > MaxNameLen:
		return fmt.Errorf("link name %q: %d bytes, at most %d: %w", name, len(name), MaxNameLen, ErrInvalid)
	case name == "." || name == "..":
		return fmt.Errorf("link name %q: %w", name, ErrInvalid)
	case strings.ContainsAny(name, "/: \t\n\r\v\f\x00"):
		return fmt.Errorf("link name %q: must not contain '/', ':', NUL or whitespace: %w", name, ErrInvalid)
	}
	return nil
}

// Validate checks what UpdateInterface needs before touching anything.
func (i *Interface) Validate() error {
	if i.Name == "" && i.Device == "" && len(i.HwAddr) == 0 {
		return fmt.Errorf("hwAddr, device and name: all empty, nothing identifies the link: %w", ErrInvalid)
	}
	if i.Name != "" {
		if err := ValidLinkName(i.Name); err != nil {
			return fmt.Errorf("name: %w", err)
		}
	}
	if i.Device != "" {
		if err := ValidLinkName(i.Device); err != nil {
			return fmt.Errorf("device: %w", err)
		}
	}
	if i.MTU < MinMTU || i.MTU > MaxMTU {
		return fmt.Errorf("mtu %d: must be within %d..%d: %w", i.MTU, MinMTU, MaxMTU, ErrInvalid)
	}
	if len(i.HwAddr) != 0 && len(i.HwAddr) != 6 && len(i.HwAddr) != 20 {
		return fmt.Errorf("hwAddr %s: %d bytes, want 6 (Ethernet) or 20 (InfiniBand): %w", i.HwAddr, len(i.HwAddr), ErrInvalid)
	}
	if len(i.Addrs) > MaxAddresses {
		return fmt.Errorf("IPAddresses: %d, at most %d: %w", len(i.Addrs), MaxAddresses, ErrInvalid)
	}
	seen := map[string]bool{}
	for k, p := range i.Addrs {
		if !p.IsValid() {
			return fmt.Errorf("IPAddresses[%d]: not an address with a prefix length: %w", k, ErrInvalid)
		}
		if p.Addr().Zone() != "" {
			return fmt.Errorf("IPAddresses[%d] %s: zones are not allowed: %w", k, p, ErrInvalid)
		}
		if p.Addr().IsUnspecified() || p.Addr().IsMulticast() {
			return fmt.Errorf("IPAddresses[%d] %s: not a unicast address: %w", k, p, ErrInvalid)
		}
		if seen[p.String()] {
			return fmt.Errorf("IPAddresses[%d] %s: listed twice: %w", k, p, ErrInvalid)
		}
		seen[p.String()] = true
	}
	return nil
}

// Validate checks one route on its own (links are checked when applied).
func (r *Route) Validate() error {
	if err := ValidLinkName(r.Device); err != nil {
		return fmt.Errorf("device: %w", err)
	}
	if r.Dest.IsValid() {
		if r.Dest.Addr().Is6() != r.IPv6 {
			return fmt.Errorf("dest %s: family does not match the route's family: %w", r.Dest, ErrInvalid)
		}
		if r.Dest != r.Dest.Masked() {
			return fmt.Errorf("dest %s: host bits set (the network is %s): %w", r.Dest, r.Dest.Masked(), ErrInvalid)
		}
	}
	if r.Gateway.IsValid() {
		if r.Gateway.Is6() != r.IPv6 {
			return fmt.Errorf("gateway %s: family does not match the route's family: %w", r.Gateway, ErrInvalid)
		}
		if r.Gateway.IsUnspecified() || r.Gateway.IsMulticast() {
			return fmt.Errorf("gateway %s: not a unicast address: %w", r.Gateway, ErrInvalid)
		}
	}
	if r.Source.IsValid() && r.Source.Is6() != r.IPv6 {
		return fmt.Errorf("source %s: family does not match the route's family: %w", r.Source, ErrInvalid)
	}
	switch r.Scope {
	case 0, 200, 253, 254: // universe, site, link, host
	default:
		return fmt.Errorf("scope %d: want 0 (universe), 200 (site), 253 (link) or 254 (host): %w", r.Scope, ErrInvalid)
	}
	if r.Flags > 0xff {
		return fmt.Errorf("flags %#x: not RTNH_F_* bits: %w", r.Flags, ErrInvalid)
	}
	if r.MTU != 0 && (r.MTU < MinMTU || r.MTU > MaxMTU) {
		return fmt.Errorf("mtu %d: must be 0 or within %d..%d: %w", r.MTU, MinMTU, MaxMTU, ErrInvalid)
	}
	return nil
}

// routeFlagsApplied are the RTNH_F_* flags a route request can set; the
// others (DEAD, LINKDOWN, OFFLOAD, ...) are the kernel's to report, so the
// runtime copies them from the host's route and they are ignored.
const routeFlagsApplied = 0x2 | 0x4 // PERVASIVE, ONLINK

// nudAll are the NUD_* state bits.
const nudAll = 0xff

// Validate checks one neighbour entry on its own.
func (nb *Neighbor) Validate() error {
	if !nb.IP.IsValid() {
		return fmt.Errorf("toIPAddress: missing address: %w", ErrInvalid)
	}
	if nb.IP.IsUnspecified() || nb.IP.IsMulticast() {
		return fmt.Errorf("toIPAddress %s: not a unicast address: %w", nb.IP, ErrInvalid)
	}
	if err := ValidLinkName(nb.Device); err != nil {
		return fmt.Errorf("device: %w", err)
	}
	if len(nb.Lladdr) != 0 && len(nb.Lladdr) != 6 && len(nb.Lladdr) != 20 {
		return fmt.Errorf("lladdr %s: %d bytes, want 6 or 20: %w", nb.Lladdr, len(nb.Lladdr), ErrInvalid)
	}
	if nb.State&^nudAll != 0 {
		return fmt.Errorf("state %#x: not NUD_* bits: %w", nb.State, ErrInvalid)
	}
	return nil
}
