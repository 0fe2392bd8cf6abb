package network_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/network"
	"github.com/keelvm/keel/agent/network/nettest"
	"github.com/keelvm/keel/init/reaper"
)

func newNet(t testing.TB, ns *nettest.NS, cfg network.Config) *network.Network {
	t.Helper()
	cfg.NetNS = ns.Path
	n, err := network.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// vethIn makes a veth pair whose end `name` (MAC m) is in ns and whose peer
// stays in peerNS.
func vethIn(t *testing.T, ns, peerNS *nettest.NS, name, m, peer string) {
	t.Helper()
	ns.IP("link", "add", name, "address", m, "type", "veth", "peer", "name", peer, "netns", peerNS.Name)
}

func sortedEq(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// A veth found by MAC is renamed, addressed (v4 and v6), given its MTU and
// brought up; `ip` reads exactly that back; a second identical call changes
// nothing and a third with fewer addresses removes the others.
func TestUpdateInterfaceVeth(t *testing.T) {
	ns, peer := nettest.New(t), nettest.New(t)
	vethIn(t, ns, peer, "cni0x", "02:00:00:00:00:11", "peer0")
	ns.IP("addr", "add", "10.99.0.9/8", "dev", "cni0x") // stale: must go
	n := newNet(t, ns, network.Config{})
	want := network.Interface{Name: "eth0", HwAddr: mac("02:00:00:00:00:11"), MTU: 1400,
		Addrs: prefixes("10.0.0.2/24", "fd00:1::2/64")}
	for i := range 2 {
		got, err := n.UpdateInterface(context.Background(), want)
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if got.Name != "eth0" || got.MTU != 1400 || got.HwAddr.String() != "02:00:00:00:00:11" {
			t.Errorf("call %d returned %+v", i, got)
		}
		l, ok := ns.Links()["eth0"]
		if !ok {
			t.Fatalf("call %d: no eth0 in %v", i, ns.Links())
		}
		if l.MTU != 1400 || l.Address != "02:00:00:00:00:11" || !l.HasFlag("UP") || l.HasFlag("NOARP") {
			t.Errorf("call %d: ip shows %+v", i, l)
		}
		if !sortedEq(l.Addrs(), []string{"10.0.0.2/24", "fd00:1::2/64"}) {
			t.Errorf("call %d: ip shows addresses %v", i, l.Addrs())
		}
	}
	want.Addrs = prefixes("10.0.0.3/24")
	want.RawFlags = 0x80 // IFF_NOARP
	if _, err := n.UpdateInterface(context.Background(), want); err != nil {
		t.Fatal(err)
	}
	if l := ns.Links()["eth0"]; !sortedEq(l.Addrs(), []string{"10.0.0.3/24"}) || !l.HasFlag("NOARP") {
		t.Errorf("after the third call ip shows %v %v", l.Addrs(), l.Flags)
	}
}

// Every kind of link the guest may see is configured the same way.
func TestUpdateInterfaceLinkTypes(t *testing.T) {
	ns, peer := nettest.New(t), nettest.New(t)
	vethIn(t, ns, peer, "base", "02:00:00:00:01:00", "p")
	ns.IP("link", "add", "mv", "link", "base", "address", "02:00:00:00:01:01", "type", "macvlan", "mode", "bridge")
	ns.IP("link", "add", "brx", "address", "02:00:00:00:01:02", "type", "bridge")
	ns.IP("tuntap", "add", "dev", "tp", "mode", "tap")
	ns.IP("link", "set", "tp", "address", "02:00:00:00:01:03")
	ns.IP("link", "set", "base", "up")
	n := newNet(t, ns, network.Config{})
	for i, c := range []struct{ mac, name, typ string }{
		{"02:00:00:00:01:01", "eth1", "macvlan"},
		{"02:00:00:00:01:02", "eth2", "bridge"},
		{"02:00:00:00:01:03", "eth3", "tuntap"},
	} {
		addr := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i), 2}), 24)
		got, err := n.UpdateInterface(context.Background(), network.Interface{Name: c.name, HwAddr: mac(c.mac), MTU: 1300, Addrs: []netip.Prefix{addr}})
		if err != nil {
			t.Fatalf("%s: %v", c.typ, err)
		}
		if got.Type != c.typ {
			t.Errorf("%s: type %q", c.name, got.Type)
		}
		l := ns.Links()[c.name]
		if l.MTU != 1300 || !sortedEq(l.Addrs(), []string{addr.String()}) || l.Address != c.mac {
			t.Errorf("%s (%s): ip shows %+v", c.name, c.typ, l)
		}
	}
}

// No link has the MAC: the link named like the request is used and gets
// the MAC (Kata's fallback for NICs whose MAC the runtime cannot know).
func TestUpdateInterfaceMACFallback(t *testing.T) {
	ns, peer := nettest.New(t), nettest.New(t)
	vethIn(t, ns, peer, "eth0", "02:00:00:00:02:01", "p")
	n := newNet(t, ns, network.Config{})
	if _, err := n.UpdateInterface(context.Background(), network.Interface{Name: "eth0", HwAddr: mac("02:00:00:00:02:99"), MTU: 1500, Addrs: prefixes("10.2.0.2/24")}); err != nil {
		t.Fatal(err)
	}
	if l := ns.Links()["eth0"]; l.Address != "02:00:00:00:02:99" || !sortedEq(l.Addrs(), []string{"10.2.0.2/24"}) {
		t.Errorf("ip shows %+v", l)
	}
}

// Renaming onto a taken name swaps the two names; both links stay up.
func TestUpdateInterfaceRenameSwap(t *testing.T) {
	ns, peer := nettest.New(t), nettest.New(t)
	vethIn(t, ns, peer, "eth0", "02:00:00:00:03:01", "p0")
	vethIn(t, ns, peer, "net1", "02:00:00:00:03:02", "p1")
	ns.IP("link", "set", "eth0", "up")
	n := newNet(t, ns, network.Config{})
	if _, err := n.UpdateInterface(context.Background(), network.Interface{Name: "eth0", HwAddr: mac("02:00:00:00:03:02"), MTU: 1500}); err != nil {
		t.Fatal(err)
	}
	ls := ns.Links()
	if ls["eth0"].Address != "02:00:00:00:03:02" || ls["net1"].Address != "02:00:00:00:03:01" {
		t.Fatalf("names not swapped: eth0=%s net1=%s", ls["eth0"].Address, ls["net1"].Address)
	}
	if !ls["net1"].HasFlag("UP") || !ls["eth0"].HasFlag("UP") {
		t.Errorf("links not up after the swap: %v %v", ls["eth0"].Flags, ls["net1"].Flags)
	}
}

// A missing link answers with the text Kata's runtime retries on.
func TestUpdateInterfaceLinkNotFound(t *testing.T) {
	ns := nettest.New(t)
	n := newNet(t, ns, network.Config{})
	_, err := n.UpdateInterface(context.Background(), network.Interface{Name: "eth0", HwAddr: mac("02:00:00:00:04:01"), MTU: 1500})
	if !errors.Is(err, network.ErrLinkNotFound) || !strings.Contains(err.Error(), "Link not found") {
		t.Fatalf("got %v, want Link not found", err)
	}
}

// The kernel refuses the MTU (a macvlan cannot exceed its lower device's)
// after addresses and the name were changed: all of it is put back.
func TestUpdateInterfaceRollsBack(t *testing.T) {
	ns, peer := nettest.New(t), nettest.New(t)
	vethIn(t, ns, peer, "base", "02:00:00:00:05:00", "p")
	ns.IP("link", "add", "mv0", "link", "base", "address", "02:00:00:00:05:01", "type", "macvlan")
	ns.IP("link", "set", "base", "up")
	ns.IP("addr", "add", "10.5.0.2/24", "dev", "mv0")
	ns.IP("link", "set", "mv0", "up")
	before := ns.Links()["mv0"]
	routes := ns.Routes()
	n := newNet(t, ns, network.Config{})
	_, err := n.UpdateInterface(context.Background(), network.Interface{Name: "eth0", HwAddr: mac("02:00:00:00:05:01"), MTU: 9000, Addrs: prefixes("10.6.0.2/24")})
	if !errors.Is(err, network.ErrInvalid) || !strings.Contains(err.Error(), "mtu 9000") {
		t.Fatalf("got %v, want an mtu error", err)
	}
	after, ok := ns.Links()["mv0"]
	if !ok {
		t.Fatalf("mv0 not renamed back: %v", ns.Links())
	}
	if after.MTU != before.MTU || !sortedEq(after.Addrs(), before.Addrs()) || !after.HasFlag("UP") || after.Address != before.Address {
		t.Errorf("not rolled back: before %+v after %+v", before, after)
	}
	if r := ns.Routes(); r != routes {
		t.Errorf("routes changed:\n%s\nwant\n%s", r, routes)
	}
}

type fakeWaiter struct{ name string }

func (f fakeWaiter) WaitNetDevice(ctx context.Context, path string) (string, error) {
	if path != "02/01" {
		return "", errors.New("unknown path")
	}
	return f.name, nil
}

// With devicePath the NIC is waited for: polling by MAC while it appears,
// through a DeviceWaiter when one is configured, and Link not found at the
// deadline.
func TestUpdateInterfaceWaitsForDevice(t *testing.T) {
	ns, peer := nettest.New(t), nettest.New(t)
	n := newNet(t, ns, network.Config{DeviceTimeout: 5 * time.Second})
	go func() {
		time.Sleep(300 * time.Millisecond)
		ns.TryIP("link", "add", "late", "address", "02:00:00:00:06:01", "type", "veth", "peer", "name", "p", "netns", peer.Name)
	}()
	start := time.Now()
	if _, err := n.UpdateInterface(context.Background(), network.Interface{Name: "eth0", HwAddr: mac("02:00:00:00:06:01"), MTU: 1500, DevicePath: "02/01"}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("returned after %v, before the link existed", d)
	}
	if _, ok := ns.Links()["eth0"]; !ok {
		t.Error("no eth0")
	}

	// The waiter names the netdev; no link has the MAC yet, so it gets it.
	vethIn(t, ns, peer, "ens5", "02:00:00:00:06:02", "p2")
	w := newNet(t, ns, network.Config{Devices: fakeWaiter{"ens5"}})
	if _, err := w.UpdateInterface(context.Background(), network.Interface{Name: "eth1", HwAddr: mac("02:00:00:00:06:77"), MTU: 1500, DevicePath: "02/01"}); err != nil {
		t.Fatal(err)
	}
	if l := ns.Links()["eth1"]; l.Address != "02:00:00:00:06:77" {
		t.Errorf("eth1: %+v", l)
	}

	short := newNet(t, ns, network.Config{DeviceTimeout: 100 * time.Millisecond})
	_, err := short.UpdateInterface(context.Background(), network.Interface{Name: "eth9", HwAddr: mac("02:00:00:00:06:09"), MTU: 1500, DevicePath: "02/03"})
	if !errors.Is(err, network.ErrLinkNotFound) || !strings.Contains(err.Error(), "02/03") {
		t.Errorf("got %v, want Link not found naming the device path", err)
	}
}

func TestListInterfaces(t *testing.T) {
	ns, peer := nettest.New(t), nettest.New(t)
	vethIn(t, ns, peer, "eth0", "02:00:00:00:07:01", "p")
	ns.IP("addr", "add", "10.7.0.2/24", "dev", "eth0")
	ns.IP("addr", "add", "fd00:7::2/64", "dev", "eth0")
	n := newNet(t, ns, network.Config{})
	list, err := n.ListInterfaces()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]network.Interface{}
	for _, i := range list {
		got[i.Name] = i
	}
	if _, ok := got["lo"]; !ok || len(got) != 2 {
		t.Fatalf("got %v, want lo and eth0", got)
	}
	e := got["eth0"]
	var addrs []string
	for _, p := range e.Addrs {
		if !p.Addr().IsLinkLocalUnicast() {
			addrs = append(addrs, p.String())
		}
	}
	if e.HwAddr.String() != "02:00:00:00:07:01" || e.Type != "veth" || !sortedEq(addrs, []string{"10.7.0.2/24", "fd00:7::2/64"}) {
		t.Errorf("eth0: %+v", e)
	}
}

// The agent runs every external command through the reaper; so do the tests.
func TestMain(m *testing.M) {
	if err := reaper.Start(); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}
