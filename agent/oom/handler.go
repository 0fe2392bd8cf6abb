package oom

import (
	"context"
	"errors"
	"fmt"

	"github.com/keelvm/keel/agent/errdefs"
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
		return nil, errdefs.ToStatus(fmt.Errorf("get oom event: %w", err))
	}
	return nil, errdefs.ToStatus(err)
}
