package storage

import (
	"context"
	"os"
	"strconv"
	"strings"

	"github.com/keelvm/keel/agent/errdefs"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/protocol/types"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// FromPB converts Kata's Storage messages (nil entries become empty
// storages, refused by Add with their index).
func FromPB(in []*pb.Storage) []Storage {
	out := make([]Storage, len(in))
	for i, s := range in {
		if s == nil {
			continue
		}
		out[i] = Storage{Driver: s.Driver, DriverOptions: s.DriverOptions, Source: s.Source, Fstype: s.Fstype,
			Options: s.Options, MountPoint: s.MountPoint, Shared: s.Shared}
		if s.FsGroup != nil {
			out[i].FSGroup = &FSGroup{GID: s.FsGroup.GroupId, OnRootMismatch: s.FsGroup.GroupChangePolicy == types.FSGroupChangePolicy_OnRootMismatch}
		}
	}
	return out
}

// Code is the gRPC code of a storage error (errdefs.Code).
func Code(err error) codes.Code { return errdefs.Code(err) }

// Handler serves the storage RPCs that are not part of a container's
// lifecycle.
type Handler struct {
	M *Manager // nil: the RPCs answer Unavailable
}

var errNoManager = status.Error(codes.Unavailable, "storage handling is not enabled")

// UpdateEphemeralMounts re-applies ephemeral storages (Kata's runtime
// sends it when a sizeLimit changes): a mounted one is remounted with the
// new options, a missing one is mounted for the sandbox.
func (h *Handler) UpdateEphemeralMounts(ctx context.Context, req *pb.UpdateEphemeralMountsRequest) (*emptypb.Empty, error) {
	if h.M == nil {
		return nil, errNoManager
	}
	ss := FromPB(req.GetStorages())
	// Everything is checked before anything is remounted, so a bad item
	// changes nothing; only ephemeral storages the agent mounted itself
	// are remounted (never the share, a rootfs or another driver's mount).
	type remount struct {
		field, mp, data string
		flags           uintptr
	}
	var fresh []Storage
	var remounts []remount
	for i, s := range ss {
		field := "storages[" + itoa(i) + "]"
		if s.Driver != DriverEphemeral {
			return nil, status.Errorf(codes.InvalidArgument, "%s.driver %q: only ephemeral storages can be updated", field, trunc(s.Driver))
		}
		if err := h.M.validate(field, &s); err != nil {
			return nil, errdefs.ToStatus(err)
		}
		if !isMountPoint(s.MountPoint) {
			fresh = append(fresh, s)
			continue
		}
		if !h.M.mountedAs(s.MountPoint, DriverEphemeral) {
			return nil, status.Errorf(codes.InvalidArgument, "%s.mount_point %q: mounted, but not as an ephemeral storage of this sandbox", field, trunc(s.MountPoint))
		}
		flags, data, err := parseOptions(field+".options", withoutOption(s.Options, "fsgid"))
		if err != nil {
			return nil, errdefs.ToStatus(err)
		}
		remounts = append(remounts, remount{field: field, mp: s.MountPoint, data: data, flags: flags})
	}
	for _, r := range remounts {
		if err := unix.Mount("", r.mp, "", r.flags|unix.MS_REMOUNT, r.data); err != nil {
			return nil, status.Errorf(codes.Internal, "%s: unable to remount %s with %q: %v", r.field, r.mp, r.data, err)
		}
	}
	if len(fresh) > 0 {
		if err := h.M.Add(ctx, "", "storages", fresh); err != nil {
			return nil, errdefs.ToStatus(err)
		}
	}
	return &emptypb.Empty{}, nil
}

// RemoveStaleVirtiofsShareMounts stats every mount point under the shared
// directory, as Kata's agent does after each container stop: virtiofsd
// then drops the cache entries and fds of what the host removed.
func (h *Handler) RemoveStaleVirtiofsShareMounts(ctx context.Context, _ *pb.RemoveStaleVirtiofsShareMountsRequest) (*emptypb.Empty, error) {
	if h.M == nil {
		return nil, errNoManager
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, status.Errorf(codes.Internal, "unable to read the mount table: %v", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if strings.HasPrefix(mp, SharedDir+"/") || mp == SharedDir {
			var st unix.Stat_t
			_ = unix.Stat(mp, &st)
		}
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	return &emptypb.Empty{}, nil
}

func itoa(i int) string {
	return strconv.Itoa(i)
}
