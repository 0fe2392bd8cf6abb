package copyfile

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/keelvm/keel/agent/errdefs"
	pb "github.com/keelvm/keel/protocol/grpc"
)

// Handler serves the CopyFile RPC. The zero value copies under DefaultRoot.
type Handler struct {
	Copier Copier
}

// CopyFile implements grpc.AgentService/CopyFile.
func (h *Handler) CopyFile(ctx context.Context, req *pb.CopyFileRequest) (*emptypb.Empty, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "copy file: empty request")
	}
	err := h.Copier.Copy(ctx, &Request{
		Path: req.Path, FileSize: req.FileSize, FileMode: req.FileMode, DirMode: req.DirMode,
		UID: req.Uid, GID: req.Gid, Offset: req.Offset, Data: req.Data,
	})
	if err != nil {
		// ErrEscape and ErrInTheWay do not name the field: it is path.
		prefix := "copy file: "
		if errors.Is(err, ErrEscape) || errors.Is(err, ErrInTheWay) {
			prefix += "path: "
		}
		return nil, errdefs.ToStatus(fmt.Errorf("%s%w", prefix, err))
	}
	return &emptypb.Empty{}, nil
}
