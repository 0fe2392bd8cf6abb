package oom

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/keelvm/keel/protocol/grpc"
)

// GetOOMEvent implements grpc.AgentService/GetOOMEvent: a long poll that
// returns the next container OOM-killed, or Canceled/DeadlineExceeded when
// the host gives up, or Unavailable when the agent shuts down.
func (w *Watcher) GetOOMEvent(ctx context.Context, _ *pb.GetOOMEventRequest) (*pb.OOMEvent, error) {
	id, err := w.Next(ctx)
	switch {
	case err == nil:
		return &pb.OOMEvent{ContainerId: id}, nil
	case errors.Is(err, ErrClosed):
		return nil, status.Error(codes.Unavailable, "get oom event: "+err.Error())
	}
	return nil, status.FromContextError(err).Err()
}
