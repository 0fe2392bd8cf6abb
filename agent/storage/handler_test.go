package storage

import (
	pb "github.com/keelvm/keel/protocol/grpc"
)

func pbUpdate(mp string, opts ...string) *pb.UpdateEphemeralMountsRequest {
	return &pb.UpdateEphemeralMountsRequest{Storages: []*pb.Storage{{Driver: DriverEphemeral, Fstype: "tmpfs", Source: "shm", MountPoint: mp, Options: opts}}}
}
