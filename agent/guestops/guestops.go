// Package guestops serves two small guest-wide RPCs of Kata's agent API:
// SetGuestDateTime (settimeofday(2), used after a VM is restored from a
// snapshot and its clock is stale) and ReseedRandomDev (mix host-provided
// bytes into the kernel RNG with RNDADDENTROPY, for the same reason: a
// restored VM would otherwise repeat its random stream).
package guestops

import (
	"context"
	"fmt"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/keelvm/keel/init/entropy"
	pb "github.com/keelvm/keel/protocol/grpc"
)

// Limits.
const (
	// MaxSec is the largest Sec the kernel accepts (KTIME_SEC_MAX,
	// math.MaxInt64 nanoseconds); above it settimeofday fails with EINVAL.
	MaxSec = 9223372036
	// MaxReseedLen bounds ReseedRandomDev data (entropy.MaxSeed).
	MaxReseedLen = entropy.MaxSeed
)

// Handler serves SetGuestDateTime and ReseedRandomDev. The zero value acts
// on the real clock and RNG; tests inject SetTime and Seed.
type Handler struct {
	// SetTime sets the wall clock; nil means unix.Settimeofday.
	SetTime func(*unix.Timeval) error
	// Seed mixes and credits entropy; nil means entropy.Seed.
	Seed func([]byte) error
}

// SetGuestDateTime implements grpc.AgentService/SetGuestDateTime.
func (h *Handler) SetGuestDateTime(ctx context.Context, req *pb.SetGuestDateTimeRequest) (*emptypb.Empty, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "set guest date time: empty request")
	}
	if req.Sec < 0 || req.Sec > MaxSec {
		return nil, status.Errorf(codes.InvalidArgument, "set guest date time: Sec: %d is outside [0, %d]", req.Sec, int64(MaxSec))
	}
	if req.Usec < 0 || req.Usec >= 1e6 {
		return nil, status.Errorf(codes.InvalidArgument, "set guest date time: Usec: %d is outside [0, 999999]", req.Usec)
	}
	set := h.SetTime
	if set == nil {
		set = unix.Settimeofday
	}
	if err := set(&unix.Timeval{Sec: req.Sec, Usec: req.Usec}); err != nil {
		return nil, status.Error(codes.Internal, fmt.Sprintf("set guest date time: settimeofday: %v", err))
	}
	return &emptypb.Empty{}, nil
}

// ReseedRandomDev implements grpc.AgentService/ReseedRandomDev.
func (h *Handler) ReseedRandomDev(ctx context.Context, req *pb.ReseedRandomDevRequest) (*emptypb.Empty, error) {
	if req == nil || len(req.Data) == 0 {
		return nil, status.Error(codes.InvalidArgument, "reseed random dev: data: must not be empty")
	}
	if len(req.Data) > MaxReseedLen {
		return nil, status.Errorf(codes.InvalidArgument, "reseed random dev: data: %d bytes exceed %d", len(req.Data), MaxReseedLen)
	}
	seed := h.Seed
	if seed == nil {
		seed = entropy.Seed
	}
	if err := seed(req.Data); err != nil {
		return nil, status.Error(codes.Internal, "reseed random dev: "+err.Error())
	}
	return &emptypb.Empty{}, nil
}
