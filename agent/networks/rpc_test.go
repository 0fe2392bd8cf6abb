package networks_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/keelvm/keel/agent/network"
	"github.com/keelvm/keel/agent/network/nettest"
	"github.com/keelvm/keel/agent/networks"
	"github.com/keelvm/keel/init/reaper"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/protocol/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestMain(m *testing.M) {
	if err := reaper.Start(); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}

func handler(t *testing.T, ns *nettest.NS) *networks.Handler {
	n, err := network.New(network.Config{NetNS: ns.Path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return networks.New(n)
}

const goodMAC = "02:00:00:00:30:01"

func iface(mut func(*types.Interface)) *pb.UpdateInterfaceRequest {
	i := &types.Interface{Name: "eth0", HwAddr: goodMAC, Mtu: 1500,
		IPAddresses: []*types.IPAddress{{Family: types.IPFamily_v4, Address: "10.3.0.2", Mask: "24"}, {Family: types.IPFamily_v6, Address: "fd00:3::2", Mask: "64"}}}
	mut(i)
	return &pb.UpdateInterfaceRequest{Interface: i}
}

func routes(rs ...*types.Route) *pb.UpdateRoutesRequest {
	return &pb.UpdateRoutesRequest{Routes: &pb.Routes{Routes: rs}}
}

// Bad input gets InvalidArgument naming the field, and changes nothing:
// links, addresses, routes and neighbours read back the same afterwards.
func TestBadInput(t *testing.T) {
	ns, peer := nettest.New(t), nettest.New(t)
	ns.IP("link", "add", "cni0", "address", goodMAC, "type", "veth", "peer", "name", "p", "netns", peer.Name)
	ns.IP("addr", "add", "10.3.0.2/24", "dev", "cni0")
	ns.IP("link", "set", "cni0", "up")
	h := handler(t, ns)
	ctx := context.Background()
	state := func() string {
		return ns.IP("addr", "show") + ns.Routes() + ns.IP("neigh", "show") + ns.IP("-6", "neigh", "show")
	}
	before := state()
	cases := []struct {
		name  string
		call  func() error
		field string
	}{
		{"no interface", func() error { _, err := h.UpdateInterface(ctx, &pb.UpdateInterfaceRequest{}); return err }, "interface.missing"},
		{"bad CIDR address", func() error {
			_, err := h.UpdateInterface(ctx, iface(func(i *types.Interface) { i.IPAddresses[1].Address = "10.3.0.300" }))
			return err
		}, `interface.IPAddresses[1].address "10.3.0.300"`},
		{"mask 33", func() error {
			_, err := h.UpdateInterface(ctx, iface(func(i *types.Interface) { i.IPAddresses[0].Mask = "33" }))
			return err
		}, `interface.IPAddresses[0].mask "33"`},
		{"mask empty", func() error {
			_, err := h.UpdateInterface(ctx, iface(func(i *types.Interface) { i.IPAddresses[1].Mask = "" }))
			return err
		}, `interface.IPAddresses[1].mask ""`},
		{"mask 129 for v6", func() error {
			_, err := h.UpdateInterface(ctx, iface(func(i *types.Interface) { i.IPAddresses[1].Mask = "129" }))
			return err
		}, `interface.IPAddresses[1].mask "129"`},
		{"unknown family", func() error {
			_, err := h.UpdateInterface(ctx, iface(func(i *types.Interface) { i.IPAddresses[1].Family = 7 }))
			return err
		}, "interface.IPAddresses[1].family 7"},
		{"family mismatch", func() error {
			_, err := h.UpdateInterface(ctx, iface(func(i *types.Interface) { i.IPAddresses[1].Family = types.IPFamily_v4 }))
			return err
		}, `interface.IPAddresses[1].address "fd00:3::2": not an v4`},
		{"MTU 0", func() error {
			_, err := h.UpdateInterface(ctx, iface(func(i *types.Interface) { i.Mtu = 0 }))
			return err
		}, "interface.mtu 0"},
		{"MTU 1e9", func() error {
			_, err := h.UpdateInterface(ctx, iface(func(i *types.Interface) { i.Mtu = 1e9 }))
			return err
		}, "interface.mtu 1000000000"},
		{"40-byte link name", func() error {
			_, err := h.UpdateInterface(ctx, iface(func(i *types.Interface) { i.Name = strings.Repeat("e", 40) }))
			return err
		}, "interface.name: link name"},
		{"name with slash", func() error {
			_, err := h.UpdateInterface(ctx, iface(func(i *types.Interface) { i.Name = "a/b" }))
			return err
		}, "interface.name: link name \"a/b\""},
		{"bad MAC", func() error {
			_, err := h.UpdateInterface(ctx, iface(func(i *types.Interface) { i.HwAddr = "02:00:zz" }))
			return err
		}, `interface.hwAddr "02:00:zz"`},
		{"duplicate address", func() error {
			_, err := h.UpdateInterface(ctx, iface(func(i *types.Interface) { i.IPAddresses[1] = i.IPAddresses[0] }))
			return err
		}, "interface.IPAddresses[1] 10.3.0.2/24: listed twice"},
		{"too many addresses", func() error {
			_, err := h.UpdateInterface(ctx, iface(func(i *types.Interface) {
				for range 70 {
					i.IPAddresses = append(i.IPAddresses, i.IPAddresses[0])
				}
			}))
			return err
		}, "interface.IPAddresses: 72, at most 64"},
		{"no routes", func() error { _, err := h.UpdateRoutes(ctx, &pb.UpdateRoutesRequest{}); return err }, "routes: missing"},
		{"route bad dest", func() error {
			_, err := h.UpdateRoutes(ctx, routes(&types.Route{Dest: "10.0.0.0/24", Device: "cni0"}, &types.Route{Dest: "10.0.0/8", Device: "cni0"}))
			return err
		}, `routes.Routes[1].dest "10.0.0/8"`},
		{"route host bits", func() error {
			_, err := h.UpdateRoutes(ctx, routes(&types.Route{Dest: "10.1.0.1/16", Device: "cni0"}))
			return err
		}, "routes.Routes[0].dest 10.1.0.1/16: host bits set"},
		{"route family", func() error {
			_, err := h.UpdateRoutes(ctx, routes(&types.Route{Dest: "fd00::/64", Device: "cni0"}))
			return err
		}, "routes.Routes[0].dest fd00::/64: family does not match"},
		{"route unknown family", func() error {
			_, err := h.UpdateRoutes(ctx, routes(&types.Route{Device: "cni0", Family: 2}))
			return err
		}, "routes.Routes[0].family 2"},
		{"route bad gateway", func() error {
			_, err := h.UpdateRoutes(ctx, routes(&types.Route{Gateway: "10.3.0.1.1", Device: "cni0"}))
			return err
		}, `routes.Routes[0].gateway "10.3.0.1.1"`},
		{"route scope", func() error {
			_, err := h.UpdateRoutes(ctx, routes(&types.Route{Dest: "10.1.0.0/16", Device: "cni0", Scope: 300}))
			return err
		}, "routes.Routes[0].scope 300"},
		{"route no device", func() error {
			_, err := h.UpdateRoutes(ctx, routes(&types.Route{Dest: "10.1.0.0/16"}))
			return err
		}, "routes.Routes[0].device: empty link name"},
		{"route mtu", func() error {
			_, err := h.UpdateRoutes(ctx, routes(&types.Route{Dest: "10.1.0.0/16", Device: "cni0", Mtu: 1 << 30}))
			return err
		}, "routes.Routes[0].mtu 1073741824"},
		{"route unreachable gateway", func() error {
			_, err := h.UpdateRoutes(ctx, routes(&types.Route{Dest: "10.1.0.0/16", Device: "cni0", Scope: 253}, &types.Route{Gateway: "172.31.0.1", Device: "cni0"}))
			return err
		}, "routes.Routes[1].gateway 172.31.0.1: unreachable"},
		{"no neighbors", func() error { _, err := h.AddARPNeighbors(ctx, &pb.AddARPNeighborsRequest{}); return err }, "neighbors: missing"},
		{"neighbor no address", func() error {
			_, err := h.AddARPNeighbors(ctx, &pb.AddARPNeighborsRequest{Neighbors: &pb.ARPNeighbors{ARPNeighbors: []*types.ARPNeighbor{{Device: "cni0"}}}})
			return err
		}, "neighbors.ARPNeighbors[0].toIPAddress.address: missing"},
		{"neighbor bad lladdr", func() error {
			_, err := h.AddARPNeighbors(ctx, &pb.AddARPNeighborsRequest{Neighbors: &pb.ARPNeighbors{ARPNeighbors: []*types.ARPNeighbor{
				{Device: "cni0", ToIPAddress: &types.IPAddress{Address: "10.3.0.1"}, Lladdr: "nope"}}}})
			return err
		}, `neighbors.ARPNeighbors[0].lladdr "nope"`},
		{"neighbor state", func() error {
			_, err := h.AddARPNeighbors(ctx, &pb.AddARPNeighborsRequest{Neighbors: &pb.ARPNeighbors{ARPNeighbors: []*types.ARPNeighbor{
				{Device: "cni0", ToIPAddress: &types.IPAddress{Address: "10.3.0.1"}, State: 4096}}}})
			return err
		}, "neighbors.ARPNeighbors[0].state 4096"},
		{"neighbor mask", func() error {
			_, err := h.AddARPNeighbors(ctx, &pb.AddARPNeighborsRequest{Neighbors: &pb.ARPNeighbors{ARPNeighbors: []*types.ARPNeighbor{
				{Device: "cni0", ToIPAddress: &types.IPAddress{Address: "10.3.0.1", Mask: "24"}}}}})
			return err
		}, `neighbors.ARPNeighbors[0].toIPAddress.mask "24"`},
		{"bad iptables rules", func() error {
			_, err := h.SetIPTables(ctx, &pb.SetIPTablesRequest{Data: []byte("*filter\n-A INPUT --bogus\nCOMMIT\n")})
			return err
		}, "data: iptables-restore failed"},
	}
	for _, c := range cases {
		err := c.call()
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), c.field) {
			t.Errorf("%s: got %v, want InvalidArgument containing %q", c.name, err, c.field)
		}
		if after := state(); after != before {
			t.Fatalf("%s changed the namespace:\n%s\nwas\n%s", c.name, after, before)
		}
	}
}

// Through the handler: the missing link is NotFound with Kata's retry
// text; a missing binary is FailedPrecondition naming it; a zero Handler
// is Unavailable.
func TestErrorCodes(t *testing.T) {
	ns := nettest.New(t)
	h := handler(t, ns)
	_, err := h.UpdateInterface(context.Background(), iface(func(*types.Interface) {}))
	if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "Link not found") {
		t.Errorf("missing link: %v", err)
	}
	n, err := network.New(network.Config{NetNS: ns.Path, ToolDirs: []string{t.TempDir()}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	_, err = networks.New(n).GetIPTables(context.Background(), &pb.GetIPTablesRequest{IsIpv6: true})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "ip6tables-save") {
		t.Errorf("missing binary: %v", err)
	}
	if _, err := (&networks.Handler{}).ListRoutes(context.Background(), &pb.ListRoutesRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("zero handler: %v", err)
	}
}

// The protocol round trip: what UpdateInterface returns and ListInterfaces
// lists is what was asked, in the protocol's shapes.
func TestProtocolRoundTrip(t *testing.T) {
	ns, peer := nettest.New(t), nettest.New(t)
	ns.IP("link", "add", "cni0", "address", goodMAC, "type", "veth", "peer", "name", "p", "netns", peer.Name)
	h := handler(t, ns)
	ctx := context.Background()
	got, err := h.UpdateInterface(ctx, iface(func(*types.Interface) {}))
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, a := range got.IPAddresses {
		if !strings.HasPrefix(a.Address, "fe80:") {
			addrs = append(addrs, a.Family.String()+" "+a.Address+"/"+a.Mask)
		}
	}
	if got.Name != "eth0" || got.HwAddr != goodMAC || got.Mtu != 1500 || strings.Join(addrs, ",") != "v4 10.3.0.2/24,v6 fd00:3::2/64" {
		t.Errorf("UpdateInterface returned %v", got)
	}
	rs, err := h.UpdateRoutes(ctx, routes(&types.Route{Gateway: "10.3.0.1", Device: "eth0"}, &types.Route{Dest: "10.4.0.0/16", Device: "eth0", Scope: 253}))
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, r := range rs.Routes {
		if (r.Dest == "" && r.Gateway == "10.3.0.1") || (r.Dest == "10.4.0.0/16" && r.Scope == 253) {
			found++
		}
	}
	if found != 2 {
		t.Errorf("UpdateRoutes returned %v", rs.Routes)
	}
	// What ListRoutes returns is valid UpdateRoutes input giving the same table.
	lr, err := h.ListRoutes(ctx, &pb.ListRoutesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	before := ns.Routes()
	if _, err := h.UpdateRoutes(ctx, routes(lr.Routes...)); err != nil {
		t.Fatalf("ListRoutes output refused by UpdateRoutes: %v", err)
	}
	if after := ns.Routes(); after != before {
		t.Errorf("re-applying ListRoutes changed the table:\n%s\nwas\n%s", after, before)
	}
	li, err := h.ListInterfaces(ctx, &pb.ListInterfacesRequest{})
	if err != nil || len(li.Interfaces) != 2 {
		t.Fatalf("ListInterfaces: %v %v", li, err)
	}
}
