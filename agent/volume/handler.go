package volume

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

// Handler serves GetVolumeStats and ResizeVolume. The zero value is ready.
type Handler struct {
	Log *slog.Logger
}

// GetVolumeStats implements grpc.AgentService/GetVolumeStats: byte and
// inode usage of the filesystem at volume_guest_path.
func (h *Handler) GetVolumeStats(ctx context.Context, req *pb.VolumeStatsRequest) (*pb.VolumeStatsResponse, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "get volume stats: empty request")
	}
	b, i, err := Stats(req.VolumeGuestPath)
	if err != nil {
		return nil, errdefs.ToStatus(fmt.Errorf("get volume stats: volume_guest_path: %w", err))
	}
	return &pb.VolumeStatsResponse{
		Usage: []*pb.VolumeUsage{
			{Total: b.Total, Available: b.Available, Used: b.Used, Unit: pb.VolumeUsage_BYTES},
			{Total: i.Total, Available: i.Available, Used: i.Used, Unit: pb.VolumeUsage_INODES},
		},
		VolumeCondition: &pb.VolumeCondition{Abnormal: false, Message: "OK"},
	}, nil
}

// ResizeVolume implements grpc.AgentService/ResizeVolume: grow the ext4
// filesystem at volume_guest_path to size bytes (0: to its device's size).
func (h *Handler) ResizeVolume(ctx context.Context, req *pb.ResizeVolumeRequest) (*emptypb.Empty, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "resize volume: empty request")
	}
	n, err := Resize(req.VolumeGuestPath, req.Size)
	if err != nil {
		return nil, errdefs.ToStatus(fmt.Errorf("resize volume: volume_guest_path %s: %w", req.VolumeGuestPath, err))
	}
	log := h.Log
	if log == nil {
		log = slog.Default()
	}
	log.Info("volume resized", "path", req.VolumeGuestPath, "size", req.Size, "capacity", n)
	return &emptypb.Empty{}, nil
}
