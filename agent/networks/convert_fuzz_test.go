package networks_test

import (
	"errors"
	"reflect"
	"testing"

	"github.com/keelvm/keel/agent/network"
	"github.com/keelvm/keel/agent/networks"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/protocol/types"
	"github.com/vishvananda/netlink"
	"google.golang.org/protobuf/proto"
)

// FuzzConvert feeds arbitrary UpdateInterface, UpdateRoutes and
// AddARPNeighbors requests through the protocol → domain → netlink
// conversion. Properties: no panic; a refusal is ErrInvalid; what is
// accepted survives domain → protocol → domain unchanged, its netlink
// request has the right family and address lengths, and a route read back
// from that request is the route asked for.
func FuzzConvert(f *testing.F) {
	seeds := []proto.Message{
		&pb.UpdateInterfaceRequest{Interface: &types.Interface{Name: "eth0", HwAddr: "02:00:00:00:00:01", Mtu: 1500, DevicePath: "02/01",
			IPAddresses: []*types.IPAddress{{Address: "10.0.0.2", Mask: "24"}, {Family: types.IPFamily_v6, Address: "fd00::2", Mask: "64"}}}},
		&pb.UpdateRoutesRequest{Routes: &pb.Routes{Routes: []*types.Route{{Gateway: "10.0.0.1", Device: "eth0"},
			{Dest: "10.0.0.0/24", Device: "eth0", Scope: 253, Source: "10.0.0.2"}, {Dest: "fd00::/64", Family: types.IPFamily_v6, Device: "eth0", Mtu: 1400, Flags: 4}, {Dest: "0.0.0.0/0", Gateway: "10.0.0.1", Device: "eth0"}}}},
		&pb.AddARPNeighborsRequest{Neighbors: &pb.ARPNeighbors{ARPNeighbors: []*types.ARPNeighbor{{ToIPAddress: &types.IPAddress{Address: "10.0.0.1"}, Device: "eth0", Lladdr: "02:00:00:00:00:09", State: 128}}}},
	}
	for i, m := range seeds {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), b)
	}
	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		switch kind % 3 {
		case 0:
			var req pb.UpdateInterfaceRequest
			if proto.Unmarshal(data, &req) != nil {
				return
			}
			in, err := networks.FromInterface(req.Interface)
			if err != nil {
				checkInvalid(t, err)
				return
			}
			back, err := networks.FromInterface(withIdentity(networks.ToInterface(in), req.Interface))
			if err != nil || !reflect.DeepEqual(back.Addrs, in.Addrs) || back.MTU != in.MTU || back.HwAddr.String() != in.HwAddr.String() {
				t.Fatalf("interface round trip: %+v → %+v (%v)", in, back, err)
			}
			for _, p := range in.Addrs {
				a := network.AddrRequest(p)
				if got, ok := network.AddrFromNetlink(*a); !ok || got != p {
					t.Fatalf("address %s → netlink %v → %s", p, a.IPNet, got)
				}
			}
		case 1:
			var req pb.UpdateRoutesRequest
			if proto.Unmarshal(data, &req) != nil {
				return
			}
			for _, pr := range req.GetRoutes().GetRoutes() {
				r, err := networks.FromRoute(pr)
				if err != nil {
					checkInvalid(t, err)
					continue
				}
				back, err := networks.FromRoute(networks.ToRoute(r))
				if err != nil || !reflect.DeepEqual(back, r) {
					t.Fatalf("route round trip: %+v → %+v (%v)", r, back, err)
				}
				nr := network.RouteRequest(r, 7)
				want := netlink.FAMILY_V4
				if r.IPv6 {
					want = netlink.FAMILY_V6
				}
				if nr.Family != want || nr.Dst == nil || (len(nr.Dst.IP) == 16) != r.IPv6 || nr.LinkIndex != 7 {
					t.Fatalf("route %+v → netlink %+v", r, nr)
				}
				read := network.RouteFromNetlink(*nr, r.Device)
				r.Flags &= 0x2 | 0x4
				if !reflect.DeepEqual(read, r) {
					t.Fatalf("route %+v → netlink → %+v", r, read)
				}
			}
		case 2:
			var req pb.AddARPNeighborsRequest
			if proto.Unmarshal(data, &req) != nil {
				return
			}
			for _, pn := range req.GetNeighbors().GetARPNeighbors() {
				nb, err := networks.FromNeighbor(pn)
				if err != nil {
					checkInvalid(t, err)
					continue
				}
				nn := network.NeighborRequest(nb, 3)
				if nn.State == 0 || (nn.Family == netlink.FAMILY_V6) != nb.IP.Is6() || (nb.IP.Is4() && nn.IP.To4() == nil) {
					t.Fatalf("neighbour %+v → netlink %+v", nb, nn)
				}
			}
		}
	})
}

// withIdentity restores the request fields ToInterface does not carry
// (the reply describes the link, not how it was found).
func withIdentity(out, in *types.Interface) *types.Interface {
	out.Device, out.Name, out.DevicePath, out.HwAddr = in.Device, in.Name, in.DevicePath, in.HwAddr
	return out
}

func checkInvalid(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, network.ErrInvalid) {
		t.Fatalf("refusal is not ErrInvalid: %v", err)
	}
}
