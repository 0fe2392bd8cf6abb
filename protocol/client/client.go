package client

import (
	"context"
	"net"

	"github.com/containerd/ttrpc"

	pb "github.com/keelvm/keel/protocol/grpc"
)

// Client is a connection to one agent.
type Client struct {
	conn   net.Conn
	ttrpc  *ttrpc.Client
	Agent  pb.AgentServiceService // grpc.AgentService
	Health pb.HealthService       // grpc.Health
}

// Dial connects to the agent at address, retrying until ctx is done.
func Dial(ctx context.Context, address string) (*Client, error) {
	conn, err := DialConn(ctx, address)
	if err != nil {
		return nil, err
	}
	return New(conn), nil
}

// New wraps an established connection.
func New(conn net.Conn) *Client {
	tc := ttrpc.NewClient(conn)
	return &Client{
		conn:   conn,
		ttrpc:  tc,
		Agent:  pb.NewAgentServiceClient(tc),
		Health: pb.NewHealthClient(tc),
	}
}

// TTRPC exposes the underlying ttrpc client, e.g. for raw Call()s.
func (c *Client) TTRPC() *ttrpc.Client { return c.ttrpc }

// Close closes the connection.
func (c *Client) Close() error { return c.ttrpc.Close() }
