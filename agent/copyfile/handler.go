package copyfile

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

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
		return nil, toStatus(err)
	}
	return &emptypb.Empty{}, nil
}

func toStatus(err error) error {
	var fe *FieldError
	switch {
	case errors.As(err, &fe) && errors.Is(err, ErrHole):
		return status.Error(codes.FailedPrecondition, "copy file: "+err.Error())
	case errors.As(err, &fe):
		return status.Error(codes.InvalidArgument, "copy file: "+err.Error())
	case errors.Is(err, ErrEscape), errors.Is(err, ErrInTheWay):
		return status.Error(codes.PermissionDenied, "copy file: path: "+err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "copy file: "+err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "copy file: "+err.Error())
	}
	return status.Error(codes.Internal, "copy file: "+err.Error())
}
