// Package server runs the agent's ttrpc services on a listener named by an
// agent address (vsock://-1:1024 by default, or unix:///path).
//
// Every RPC passes through one interceptor that records its latency and
// outcome for GetMetrics, logs failures, and turns a handler panic into an
// Internal status: one bad request must never take the agent (PID 1 of the
// guest) down.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/mdlayher/vsock"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/keelvm/keel/agent/connlimit"
	"github.com/keelvm/keel/agent/metrics"
	"github.com/keelvm/keel/protocol/addr"
	pb "github.com/keelvm/keel/protocol/grpc"
)

// DefaultAddr is Kata's default agent.server_addr.
const DefaultAddr = "vsock://-1:1024"

// Listen opens a listener for an agent address. For unix:// a stale socket
// file left by an earlier run is removed first.
func Listen(address string) (net.Listener, error) {
	a, err := addr.Parse(address)
	if err != nil {
		return nil, err
	}
	switch a.Scheme {
	case addr.VSock:
		var ln net.Listener
		if a.CID == addr.AnyCID {
			ln, err = vsock.Listen(a.Port, nil)
		} else {
			ln, err = vsock.ListenContextID(a.CID, a.Port, nil)
		}
		if err != nil {
			return nil, fmt.Errorf("unable to listen on %s: %w", a, err)
		}
		return ln, nil
	case addr.Unix:
		if fi, err := os.Lstat(a.Path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(a.Path)
		}
		ln, err := net.Listen("unix", a.Path)
		if err != nil {
			return nil, fmt.Errorf("unable to listen on %s: %w", a, err)
		}
		return ln, nil
	}
	return nil, fmt.Errorf("unable to listen on %s: the agent listens on vsock:// or unix:// addresses only", a)
}

// Server is a ttrpc server with the agent's services registered.
type Server struct {
	ttrpc   *ttrpc.Server
	log     *slog.Logger
	metrics *metrics.Registry
	direct  map[string]ttrpc.Method // by full method name, see EncodedStreamReader
}

// EncodedStreamReader is implemented by an AgentService that can answer
// ReadStdout and ReadStderr with a message whose encoding is already built
// around the data (protocol/readstream). The generated handlers must
// return a *grpc.ReadStreamResponse, which ttrpc marshals into a fresh
// buffer: one more copy and allocation of every chunk of container output.
// When the service implements this, the interceptor calls these methods
// for the two RPCs instead, with the same metrics, logging and panic
// recovery as every other RPC.
type EncodedStreamReader interface {
	ReadStdoutEncoded(context.Context, *pb.ReadStreamRequest) (proto.Message, error)
	ReadStderrEncoded(context.Context, *pb.ReadStreamRequest) (proto.Message, error)
}

// directMethods returns the ttrpc methods that replace generated handlers
// of agent, by full method name.
func directMethods(agent pb.AgentServiceService) map[string]ttrpc.Method {
	er, ok := agent.(EncodedStreamReader)
	if !ok {
		return nil
	}
	read := func(f func(context.Context, *pb.ReadStreamRequest) (proto.Message, error)) ttrpc.Method {
		return func(ctx context.Context, unmarshal func(any) error) (any, error) {
			var req pb.ReadStreamRequest
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			return f(ctx, &req)
		}
	}
	return map[string]ttrpc.Method{
		"/grpc.AgentService/ReadStdout": read(er.ReadStdoutEncoded),
		"/grpc.AgentService/ReadStderr": read(er.ReadStderrEncoded),
	}
}

// New registers agent and health on a new ttrpc server. m may be nil.
func New(agent pb.AgentServiceService, health pb.HealthService, m *metrics.Registry, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{log: log, metrics: m, direct: directMethods(agent)}
	ts, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(s.intercept(m)))
	if err != nil {
		return nil, fmt.Errorf("unable to create ttrpc server: %w", err)
	}
	pb.RegisterAgentServiceService(ts, agent)
	pb.RegisterHealthService(ts, health)
	s.ttrpc = ts
	return s, nil
}

// Serve accepts connections on ln until Shutdown or Close, within the
// connection limits of package connlimit (a cap on connections with the
// idle ones evicted first, a deadline for a half-sent frame and a blocked
// reply, room kept under RLIMIT_NOFILE).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	cl := connlimit.Wrap(ln, connlimit.Options{Log: s.log})
	s.log.Debug("connection limits", "max_conns", cl.Max(), "frame_timeout", connlimit.FrameTimeout, "write_timeout", connlimit.WriteTimeout)
	if s.metrics != nil {
		s.metrics.Gauge("keel_connections", "Open ttrpc connections.", func() float64 { return float64(cl.Stats().Open) })
		s.metrics.Gauge("keel_connections_evicted", "Idle connections closed to make room for a new one.", func() float64 { return float64(cl.Stats().Evicted) })
		s.metrics.Gauge("keel_connections_refused", "Connections refused at the cap with every connection busy.", func() float64 { return float64(cl.Stats().Refused) })
		s.metrics.Gauge("keel_connections_timed_out", "Connections closed for a half-sent frame or a blocked reply.", func() float64 {
			st := cl.Stats()
			return float64(st.FrameTimeouts + st.WriteTimeouts)
		})
	}
	err := s.ttrpc.Serve(ctx, cl)
	if errors.Is(err, ttrpc.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting and waits for in-flight RPCs until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.ttrpc.Shutdown(ctx) }

// Close stops the server at once.
func (s *Server) Close() error { return s.ttrpc.Close() }

func (s *Server) intercept(m *metrics.Registry) ttrpc.UnaryServerInterceptor {
	return func(ctx context.Context, um ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, h ttrpc.Method) (resp interface{}, err error) {
		start := time.Now()
		defer func() {
			if r := recover(); r != nil {
				s.log.Error("rpc handler panicked", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
				resp, err = nil, status.Errorf(codes.Internal, "%s: internal error (handler panicked: %v)", info.FullMethod, r)
			}
			d := time.Since(start)
			if m != nil {
				m.ObserveRPC(info.FullMethod, d, err != nil)
			}
			if err != nil {
				lvl := slog.LevelWarn
				if status.Code(err) == codes.Unimplemented {
					lvl = slog.LevelDebug
				}
				s.log.Log(ctx, lvl, "rpc failed", "method", info.FullMethod, "duration", d, "err", err)
			} else {
				s.log.Debug("rpc", "method", info.FullMethod, "duration", d)
			}
		}()
		if d, ok := s.direct[info.FullMethod]; ok {
			h = d
		}
		return h(ctx, um)
	}
}
