package swap

import (
	"context"
	"fmt"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/keelvm/keel/agent/errdefs"
	pb "github.com/keelvm/keel/protocol/grpc"
)

// Handler serves AddSwapPath. The zero value is ready.
type Handler struct {
	Log *slog.Logger
}

// PCIHandler serves AddSwap.
type PCIHandler struct {
	// Blocks finds AddSwap's disk; nil answers AddSwap with Unimplemented.
	Blocks BlockFinder
	Log    *slog.Logger
}

// AddSwap implements grpc.AgentService/AddSwap: swap on the virtio-blk disk
// at the PCI path, waiting for it to appear (agent.hotplug_timeout).
func (h *PCIHandler) AddSwap(ctx context.Context, req *pb.AddSwapRequest) (*emptypb.Empty, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "add swap: empty request")
	}
	if h.Blocks == nil {
		return nil, status.Error(codes.Unimplemented, "add swap: PCIPath: PCI block devices are not available in this agent")
	}
	path, err := PCIPath(req.PCIPath)
	if err != nil {
		return nil, errdefs.ToStatus(fmt.Errorf("add swap: %w", err))
	}
	dev, err := h.Blocks.PCIBlock(ctx, path)
	if err != nil {
		return nil, errdefs.ToStatus(fmt.Errorf("add swap: PCIPath %s: %w", path, err))
	}
	if err := On(dev); err != nil {
		return nil, errdefs.ToStatus(fmt.Errorf("add swap: PCIPath %s: %w", path, err))
	}
	log := h.Log
	if log == nil {
		log = slog.Default()
	}
	log.Info("swap on", "pci_path", path, "device", dev)
	return &emptypb.Empty{}, nil
}

// AddSwapPath implements grpc.AgentService/AddSwapPath: swap on a file or
// block device already in the guest.
func (h *Handler) AddSwapPath(ctx context.Context, req *pb.AddSwapPathRequest) (*emptypb.Empty, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "add swap path: empty request")
	}
	if err := On(req.Path); err != nil {
		return nil, errdefs.ToStatus(fmt.Errorf("add swap path: path: %w", err))
	}
	h.log().Info("swap on", "path", req.Path)
	return &emptypb.Empty{}, nil
}

func (h *Handler) log() *slog.Logger {
	if h.Log != nil {
		return h.Log
	}
	return slog.Default()
}
