// Package networks adapts agent/network to the ttrpc AgentService:
// UpdateInterface, UpdateRoutes, ListInterfaces, ListRoutes,
// AddARPNeighbors, GetIPTables and SetIPTables. It converts protocol
// messages (rejecting bad input with InvalidArgument naming the field, e.g.
// "interface.IPAddresses[1].mask") and turns the domain's errors into gRPC
// statuses (errdefs.ToStatus); the work is agent/network's.
package networks

import (
	"context"
	"errors"
	"fmt"

	"github.com/keelvm/keel/agent/errdefs"
	"github.com/keelvm/keel/agent/network"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/protocol/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Handler serves the network RPCs over one network.Network. A zero Handler
// (Net nil) answers every network RPC with Unavailable.
type Handler struct {
	Net *network.Network
}

// New returns a Handler over n.
func New(n *network.Network) *Handler { return &Handler{Net: n} }

var errNoNetwork = status.Error(codes.Unavailable, "network configuration is not available in this agent")

// fail names where a failure came from: a field error gets the field's
// path (prefix: "interface.", "routes.Routes[2]." ...), any other error the
// RPC's name; then errdefs.ToStatus gives its code. A status passes as is.
func fail(rpc, prefix string, err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(err, network.ErrInvalid) {
		return errdefs.ToStatus(fmt.Errorf("%s%w", prefix, err))
	}
	return errdefs.ToStatus(fmt.Errorf("%s: %w", rpc, err))
}

// UpdateInterface configures one link (see network.UpdateInterface) and
// returns it as it now is.
func (h *Handler) UpdateInterface(ctx context.Context, req *pb.UpdateInterfaceRequest) (*types.Interface, error) {
	if h.Net == nil {
		return nil, errNoNetwork
	}
	in, err := FromInterface(req.GetInterface())
	if err != nil {
		return nil, fail("UpdateInterface", "interface.", err)
	}
	out, err := h.Net.UpdateInterface(ctx, in)
	if err != nil {
		return nil, fail("UpdateInterface", "interface.", err)
	}
	return ToInterface(out), nil
}

// UpdateRoutes replaces the routes of the links the request names and
// returns the resulting main table.
func (h *Handler) UpdateRoutes(ctx context.Context, req *pb.UpdateRoutesRequest) (*pb.Routes, error) {
	if h.Net == nil {
		return nil, errNoNetwork
	}
	if req.GetRoutes() == nil {
		return nil, status.Error(codes.InvalidArgument, "routes: missing")
	}
	in := req.GetRoutes().GetRoutes()
	if len(in) > network.MaxRoutes {
		return nil, status.Errorf(codes.InvalidArgument, "routes.Routes: %d, at most %d", len(in), network.MaxRoutes)
	}
	routes := make([]network.Route, len(in))
	for i, r := range in {
		var err error
		if routes[i], err = FromRoute(r); err != nil {
			return nil, fail("UpdateRoutes", fmt.Sprintf("routes.Routes[%d].", i), err)
		}
	}
	out, err := h.Net.UpdateRoutes(routes)
	if err != nil {
		return nil, fail("UpdateRoutes", "routes.", err)
	}
	return routesPB(out), nil
}

func routesPB(rs []network.Route) *pb.Routes {
	out := &pb.Routes{}
	for _, r := range rs {
		out.Routes = append(out.Routes, ToRoute(r))
	}
	return out
}

// ListInterfaces lists every link with its addresses.
func (h *Handler) ListInterfaces(ctx context.Context, _ *pb.ListInterfacesRequest) (*pb.Interfaces, error) {
	if h.Net == nil {
		return nil, errNoNetwork
	}
	list, err := h.Net.ListInterfaces()
	if err != nil {
		return nil, fail("ListInterfaces", "", err)
	}
	out := &pb.Interfaces{}
	for _, i := range list {
		out.Interfaces = append(out.Interfaces, ToInterface(i))
	}
	return out, nil
}

// ListRoutes lists the main routing table.
func (h *Handler) ListRoutes(ctx context.Context, _ *pb.ListRoutesRequest) (*pb.Routes, error) {
	if h.Net == nil {
		return nil, errNoNetwork
	}
	out, err := h.Net.ListRoutes()
	if err != nil {
		return nil, fail("ListRoutes", "", err)
	}
	return routesPB(out), nil
}

// AddARPNeighbors adds static neighbour entries, all or nothing.
func (h *Handler) AddARPNeighbors(ctx context.Context, req *pb.AddARPNeighborsRequest) (*emptypb.Empty, error) {
	if h.Net == nil {
		return nil, errNoNetwork
	}
	if req.GetNeighbors() == nil {
		return nil, status.Error(codes.InvalidArgument, "neighbors: missing")
	}
	in := req.GetNeighbors().GetARPNeighbors()
	if len(in) > network.MaxNeighbors {
		return nil, status.Errorf(codes.InvalidArgument, "neighbors.ARPNeighbors: %d, at most %d", len(in), network.MaxNeighbors)
	}
	neighs := make([]network.Neighbor, len(in))
	for i, nb := range in {
		var err error
		if neighs[i], err = FromNeighbor(nb); err != nil {
			return nil, fail("AddARPNeighbors", fmt.Sprintf("neighbors.ARPNeighbors[%d].", i), err)
		}
	}
	if err := h.Net.AddARPNeighbors(neighs); err != nil {
		return nil, fail("AddARPNeighbors", "neighbors.", err)
	}
	return &emptypb.Empty{}, nil
}

// GetIPTables returns iptables-save's (ip6tables-save's) output.
func (h *Handler) GetIPTables(ctx context.Context, req *pb.GetIPTablesRequest) (*pb.GetIPTablesResponse, error) {
	if h.Net == nil {
		return nil, errNoNetwork
	}
	data, err := h.Net.GetIPTables(ctx, req.GetIsIpv6())
	if err != nil {
		return nil, fail("GetIPTables", "", err)
	}
	return &pb.GetIPTablesResponse{Data: data}, nil
}

// SetIPTables feeds iptables-restore (ip6tables-restore).
func (h *Handler) SetIPTables(ctx context.Context, req *pb.SetIPTablesRequest) (*pb.SetIPTablesResponse, error) {
	if h.Net == nil {
		return nil, errNoNetwork
	}
	data, err := h.Net.SetIPTables(ctx, req.GetIsIpv6(), req.GetData())
	if err != nil {
		return nil, fail("SetIPTables", "data: ", err)
	}
	return &pb.SetIPTablesResponse{Data: data}, nil
}
