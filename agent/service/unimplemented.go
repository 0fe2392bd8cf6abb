package service

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/keelvm/keel/protocol/grpc"
)

// Unimplemented answers every AgentService RPC with codes.Unimplemented and
// the RPC's name. Service falls back to it for any RPC no handler claims, so
// an RPC Keel does not implement can never look like a success.
type Unimplemented struct{}

var _ pb.AgentServiceService = Unimplemented{}

func unimplemented(rpc string) error {
	return status.Errorf(codes.Unimplemented, "%s is not implemented by this agent", rpc)
}
