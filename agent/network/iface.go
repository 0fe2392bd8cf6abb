package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// devicePoll is how often the link is looked for while a NIC hot-plugs
// and no DeviceWaiter is configured.
const devicePoll = 10 * time.Millisecond

// UpdateInterface configures the link want describes (Kata's
// UpdateInterface): found by MAC (else by device, else by name, whose MAC
// is then set), it gets exactly want's addresses (IPv6 link-local ones
// stay), its MTU, its name (swapped with a link that has the name already),
// NOARP when RawFlags asks, and is brought up. When want.DevicePath is set
// the NIC is waited for first. It returns the link as it now is. On failure
// the link (and a link whose name was taken) is put back as it was.
// Equivalent to: `ip link set DEV down name NAME mtu MTU [arp off] up; ip addr replace ...`.
func (n *Network) UpdateInterface(ctx context.Context, want Interface) (Interface, error) {
	if err := want.Validate(); err != nil {
		return Interface{}, err
	}
	hint := ""
	if want.DevicePath != "" {
		var err error
		if hint, err = n.waitDevice(ctx, want); err != nil {
			return Interface{}, err
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	link, setMAC, err := n.findLink(want, hint)
	if err != nil {
		return Interface{}, err
	}
	tx := &linkTx{n: n}
	if err := tx.apply(link, setMAC, want); err != nil {
		if rerr := tx.rollback(); rerr != nil {
			n.log.Error("network: rollback of a failed UpdateInterface left changes", "link", link.Attrs().Name, "err", rerr)
			err = fmt.Errorf("%w (and the rollback failed: %v)", err, rerr)
		}
		return Interface{}, err
	}
	return n.readInterface(link.Attrs().Index)
}

// waitDevice waits until the NIC at want.DevicePath is there, through the
// DeviceWaiter when there is one (its link name is returned as a lookup
// hint), else by polling for the link by MAC.
func (n *Network) waitDevice(ctx context.Context, want Interface) (string, error) {
	ctx, cancel := n.deadline(ctx)
	defer cancel()
	if n.cfg.Devices != nil {
		name, err := n.cfg.Devices.WaitNetDevice(ctx, want.DevicePath)
		if err != nil {
			return "", fmt.Errorf("devicePath %s: interface not available: %w", want.DevicePath, err)
		}
		return name, nil
	}
	if len(want.HwAddr) == 0 {
		return "", nil // nothing to wait by: the lookup below decides
	}
	t := time.NewTicker(devicePoll)
	defer t.Stop()
	for {
		_, err := n.linkByMAC(want.HwAddr)
		if !errors.Is(err, ErrLinkNotFound) {
			return "", err
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("devicePath %s: no link with MAC %s appeared: %w (%v)", want.DevicePath, want.HwAddr, ErrLinkNotFound, ctx.Err())
		case <-t.C:
		}
	}
}

// findLink finds want's link: by MAC, then by device name, by the waiter's
// hint and by the target name. A link found by name gets want's MAC
// (setMAC), as Kata does for NICs whose MAC the runtime cannot know.
func (n *Network) findLink(want Interface, hint string) (link netlink.Link, setMAC bool, err error) {
	if len(want.HwAddr) != 0 {
		if link, err = n.linkByMAC(want.HwAddr); !errors.Is(err, ErrLinkNotFound) {
			return link, false, err
		}
	}
	for _, name := range []string{want.Device, hint, want.Name} {
		if name == "" {
			continue
		}
		if link, err = n.linkByName(name); !errors.Is(err, ErrLinkNotFound) {
			return link, err == nil && len(want.HwAddr) != 0, err
		}
	}
	return nil, false, fmt.Errorf("%w (Address: %s, device %q, name %q)", ErrLinkNotFound, want.HwAddr, want.Device, want.Name)
}

// linkSnapshot is what UpdateInterface may change on one link.
type linkSnapshot struct {
	index int
	name  string
	mtu   int
	mac   net.HardwareAddr
	up    bool
	noarp bool
	addrs []netlink.Addr // nil when the addresses were not touched
}

func snapshotLink(l netlink.Link) linkSnapshot {
	a := l.Attrs()
	return linkSnapshot{index: a.Index, name: a.Name, mtu: a.MTU, mac: slices.Clone(a.HardwareAddr),
		up: a.Flags&net.FlagUp != 0, noarp: a.RawFlags&unix.IFF_NOARP != 0}
}

// linkTx applies an interface update and remembers how to undo it.
type linkTx struct {
	n     *Network
	saved []linkSnapshot // links touched, in order
}

func (tx *linkTx) save(l netlink.Link) *linkSnapshot {
	for i := range tx.saved {
		if tx.saved[i].index == l.Attrs().Index {
			return &tx.saved[i]
		}
	}
	tx.saved = append(tx.saved, snapshotLink(l))
	return &tx.saved[len(tx.saved)-1]
}

func (tx *linkTx) apply(link netlink.Link, setMAC bool, want Interface) error {
	h := tx.n.h
	snap := tx.save(link)
	name := link.Attrs().Name
	if snap.up {
		if err := h.LinkSetDown(link); err != nil {
			return fmt.Errorf("unable to set %s down: %w", name, err)
		}
	}
	if setMAC {
		if err := h.LinkSetHardwareAddr(link, want.HwAddr); err != nil {
			return fmt.Errorf("hwAddr %s: unable to set it on %s: %w", want.HwAddr, name, err)
		}
	}
	if err := tx.setAddrs(link, snap, want.Addrs); err != nil {
		return err
	}
	if want.Name != "" && want.Name != name {
		if err := tx.rename(link, want.Name); err != nil {
			return err
		}
		name = want.Name
	}
	if err := h.LinkSetMTU(link, want.MTU); err != nil {
		return fmt.Errorf("mtu %d: unable to set it on %s: %w: %w", want.MTU, name, err, ErrInvalid)
	}
	setARP := h.LinkSetARPOn
	if want.RawFlags&unix.IFF_NOARP != 0 {
		setARP = h.LinkSetARPOff
	}
	if err := setARP(link); err != nil {
		return fmt.Errorf("raw_flags: unable to set NOARP on %s: %w", name, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("unable to set %s up: %w", name, err)
	}
	return nil
}

// setAddrs makes want the link's addresses: removes the others first
// (except IPv6 link-local ones, the kernel's own; removing a primary address
// first would take the secondaries of its subnet with it), then replaces
// (adds) each wanted one.
func (tx *linkTx) setAddrs(link netlink.Link, snap *linkSnapshot, want []netip.Prefix) error {
	h := tx.n.h
	have, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("unable to list the addresses of %s: %w", link.Attrs().Name, err)
	}
	snap.addrs = have
	wanted := map[netip.Prefix]bool{}
	for _, p := range want {
		wanted[p] = true
	}
	for _, a := range have {
		p, ok := ipNetToPrefix(a.IPNet)
		if !ok || wanted[p] || (p.Addr().Is6() && p.Addr().IsLinkLocalUnicast()) {
			continue
		}
		if err := h.AddrDel(link, &netlink.Addr{IPNet: a.IPNet}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("unable to remove address %s from %s: %w", p, link.Attrs().Name, err)
		}
	}
	for i, p := range want {
		a := &netlink.Addr{IPNet: prefixToIPNet(p)}
		if err := h.AddrReplace(link, a); err != nil {
			if p.Addr().Is6() && (errors.Is(err, unix.EACCES) || errors.Is(err, unix.EAFNOSUPPORT)) {
				// IPv6 is disabled in the guest: Kata skips such addresses
				// rather than failing the sandbox.
				tx.n.log.Warn("network: IPv6 disabled, address skipped", "link", link.Attrs().Name, "addr", p, "err", err)
				continue
			}
			return fmt.Errorf("IPAddresses[%d] %s: unable to add it to %s: %w", i, p, link.Attrs().Name, err)
		}
	}
	return nil
}

// rename gives link the name to; a link that has it already gets link's
// old name (the two swap through a temporary name, as in Kata).
func (tx *linkTx) rename(link netlink.Link, to string) error {
	h := tx.n.h
	from := link.Attrs().Name
	other, err := tx.n.linkByName(to)
	if err != nil && !errors.Is(err, ErrLinkNotFound) {
		return err
	}
	if other != nil {
		osnap := tx.save(other)
		if osnap.up {
			if err := h.LinkSetDown(other); err != nil {
				return fmt.Errorf("unable to set %s down to rename it: %w", to, err)
			}
		}
		if err := h.LinkSetName(other, tempName(other.Attrs().Index)); err != nil {
			return fmt.Errorf("unable to move %s out of the way: %w", to, err)
		}
	}
	if err := h.LinkSetName(link, to); err != nil {
		return fmt.Errorf("name %q: unable to rename %s: %w", to, from, err)
	}
	if other != nil {
		if err := h.LinkSetName(other, from); err != nil {
			return fmt.Errorf("unable to give %s's old name %s to the link that was %s: %w", to, from, to, err)
		}
		if tx.save(other).up {
			if err := h.LinkSetUp(other); err != nil {
				return fmt.Errorf("unable to set %s up again: %w", from, err)
			}
		}
	}
	return nil
}

// tempName is a link name no request can ask for (requests are validated
// but may use any valid name, so it is derived from the unique index).
func tempName(index int) string { return fmt.Sprintf("kt%d", index) }

// rollback puts every touched link back as it was: names first (all to
// temporary names, then the saved ones, so swaps unwind), then MAC,
// addresses, MTU, ARP and up state.
func (tx *linkTx) rollback() error {
	h := tx.n.h
	var errs []error
	links := map[int]netlink.Link{}
	for _, s := range tx.saved {
		l, err := h.LinkByIndex(s.index)
		if err != nil {
			errs = append(errs, fmt.Errorf("link %d (%s) is gone: %w", s.index, s.name, err))
			continue
		}
		links[s.index] = l
		_ = h.LinkSetDown(l)
	}
	for _, s := range tx.saved {
		if l := links[s.index]; l != nil && l.Attrs().Name != s.name {
			if err := h.LinkSetName(l, tempName(s.index)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, s := range tx.saved {
		l := links[s.index]
		if l == nil {
			continue
		}
		if l.Attrs().Name != s.name {
			if err := h.LinkSetName(l, s.name); err != nil {
				errs = append(errs, fmt.Errorf("unable to rename link %d back to %s: %w", s.index, s.name, err))
			}
		}
		if l.Attrs().HardwareAddr.String() != s.mac.String() && len(s.mac) != 0 {
			if err := h.LinkSetHardwareAddr(l, s.mac); err != nil {
				errs = append(errs, fmt.Errorf("unable to restore the MAC of %s: %w", s.name, err))
			}
		}
		if s.addrs != nil {
			errs = append(errs, tx.restoreAddrs(l, s.addrs))
		}
		if l.Attrs().MTU != s.mtu {
			if err := h.LinkSetMTU(l, s.mtu); err != nil {
				errs = append(errs, fmt.Errorf("unable to restore the MTU of %s: %w", s.name, err))
			}
		}
		setARP := h.LinkSetARPOn
		if s.noarp {
			setARP = h.LinkSetARPOff
		}
		if err := setARP(l); err != nil {
			errs = append(errs, err)
		}
		if s.up {
			if err := h.LinkSetUp(l); err != nil {
				errs = append(errs, fmt.Errorf("unable to set %s up again: %w", s.name, err))
			}
		}
	}
	return errors.Join(errs...)
}

func (tx *linkTx) restoreAddrs(l netlink.Link, saved []netlink.Addr) error {
	h := tx.n.h
	have, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return err
	}
	was := map[string]bool{}
	for _, a := range saved {
		was[a.IPNet.String()] = true
	}
	var errs []error
	for _, a := range have {
		if !was[a.IPNet.String()] {
			if err := h.AddrDel(l, &netlink.Addr{IPNet: a.IPNet}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				errs = append(errs, fmt.Errorf("unable to remove address %s: %w", a.IPNet, err))
			}
		}
	}
	for _, a := range saved {
		b := netlink.Addr{IPNet: a.IPNet, Label: a.Label, Flags: a.Flags, Scope: a.Scope, Peer: a.Peer, Broadcast: a.Broadcast}
		if err := h.AddrReplace(l, &b); err != nil {
			errs = append(errs, fmt.Errorf("unable to restore address %s: %w", a.IPNet, err))
		}
	}
	return errors.Join(errs...)
}

// readInterface reads a link back as an Interface.
func (n *Network) readInterface(index int) (Interface, error) {
	l, err := n.h.LinkByIndex(index)
	if err != nil {
		return Interface{}, fmt.Errorf("unable to read link %d back: %w", index, err)
	}
	return n.toInterface(l)
}

func (n *Network) toInterface(l netlink.Link) (Interface, error) {
	a := l.Attrs()
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return n.h.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return Interface{}, fmt.Errorf("unable to list the addresses of %s: %w", a.Name, err)
	}
	out := Interface{Device: a.Name, Name: a.Name, MTU: a.MTU, HwAddr: a.HardwareAddr, RawFlags: a.RawFlags, Type: l.Type()}
	for _, ad := range addrs {
		if p, ok := ipNetToPrefix(ad.IPNet); ok {
			out.Addrs = append(out.Addrs, p)
		}
	}
	return out, nil
}

// ListInterfaces lists every link of the namespace with its addresses.
// Equivalent to: `ip addr show`.
func (n *Network) ListInterfaces() ([]Interface, error) {
	links, err := retryDump(n.h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("unable to list links: %w", err)
	}
	out := make([]Interface, 0, len(links))
	for _, l := range links {
		i, err := n.toInterface(l)
		if err != nil {
			return nil, err
		}
		out = append(out, i)
	}
	return out, nil
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)}
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	if bits == 32 {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, ones), true
}

// AddrRequest is the netlink address UpdateInterface adds for p.
func AddrRequest(p netip.Prefix) *netlink.Addr { return &netlink.Addr{IPNet: prefixToIPNet(p)} }

// AddrFromNetlink is how ListInterfaces reports a kernel address.
func AddrFromNetlink(a netlink.Addr) (netip.Prefix, bool) { return ipNetToPrefix(a.IPNet) }
