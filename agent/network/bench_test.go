package network_test

import (
	"context"
	"net/netip"
	"testing"

	"github.com/keelvm/keel/agent/network"
	"github.com/keelvm/keel/agent/network/nettest"
)

// BenchmarkUpdateInterfaceAndRoutes is what Kata's runtime costs the agent
// per endpoint before CreateSandbox, in host mode: UpdateInterface (MAC
// lookup, addresses, MTU, up) then UpdateRoutes (a subnet route and a
// default route), alternating between two address plans so every
// iteration really changes the link and the table.
func BenchmarkUpdateInterfaceAndRoutes(b *testing.B) {
	ns, peer := nettest.New(b), nettest.New(b)
	ns.IP("link", "add", "ens4", "address", "02:00:00:00:50:01", "type", "veth", "peer", "name", "p", "netns", peer.Name)
	peer.IP("link", "set", "p", "up")
	n := newNet(b, ns, network.Config{})
	plans := [2]struct {
		addr    netip.Prefix
		subnet  netip.Prefix
		gateway netip.Addr
	}{
		{netip.MustParsePrefix("10.50.0.2/24"), netip.MustParsePrefix("10.51.0.0/16"), netip.MustParseAddr("10.50.0.1")},
		{netip.MustParsePrefix("10.60.0.2/24"), netip.MustParsePrefix("10.61.0.0/16"), netip.MustParseAddr("10.60.0.1")},
	}
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		p := plans[i%2]
		if _, err := n.UpdateInterface(ctx, network.Interface{Name: "eth0", HwAddr: mac("02:00:00:00:50:01"), MTU: 1500, Addrs: []netip.Prefix{p.addr}}); err != nil {
			b.Fatal(err)
		}
		if _, err := n.UpdateRoutes([]network.Route{
			{Dest: p.subnet, Gateway: p.gateway, Device: "eth0"},
			{Gateway: p.gateway, Device: "eth0"},
		}); err != nil {
			b.Fatal(err)
		}
	}
}
