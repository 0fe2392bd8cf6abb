// Package server runs the agent's ttrpc services on a listener named by an
// agent address (vsock://-1:1024 by default, or unix:///path).
//
// Every RPC passes through one interceptor that records its latency and
// outcome for GetMetrics, logs failures, and turns a handler panic into an
// Internal status: one bad request must never take the agent (PID 1 of the
// guest) down. It also caps the requests in flight across all connections
// (MaxPendingRequests): package connlimit bounds them per connection only.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/mdlayher/vsock"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/keelvm/keel/agent/bootgate"
	"github.com/keelvm/keel/agent/connlimit"
	"github.com/keelvm/keel/agent/errdefs"
	"github.com/keelvm/keel/agent/metrics"
	"github.com/keelvm/keel/agent/streamread"
	"github.com/keelvm/keel/protocol/addr"
	pb "github.com/keelvm/keel/protocol/grpc"
)

// DefaultAddr is Kata's default agent.server_addr.
const DefaultAddr = "vsock://-1:1024"

// MaxPendingRequests caps the requests whose handlers run at once, across
// all connections. Each pending long poll (WaitProcess, GetOOMEvent,
// ReadStdout) costs the agent about 6.5 KiB (its goroutine, context and
// decoded request), and connlimit's per-connection cap (256 connections x
// 1,024) would let a buggy or hostile host pin ~1.7 GB. 4,096 allows ~28 MiB
// (measured 6.6-7.2 KiB of RssAnon each, tests/hostmode/agentproc), under a
// quarter of a 128 MiB guest, and is still far above what Kata's runtime
// keeps (one GetOOMEvent plus a WaitProcess, ReadStdout and ReadStderr per
// process). Beyond it a request is answered at once with ResourceExhausted.
const MaxPendingRequests = 4096

// exempt reports whether method bypasses MaxPendingRequests: grpc.Health
// (the runtime's liveness probe must keep answering under a flood) and
// GetMetrics (so the flood can be seen). All answer at once, so they never
// stay pending.
func exempt(method string) bool {
	return strings.HasPrefix(method, "/grpc.Health/") || method == "/grpc.AgentService/GetMetrics"
}

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
	gate    *bootgate.Gate          // nil: no wait (WithBootGate)

	maxPending        int64
	pending, rejected atomic.Int64
}

// WithBootGate makes every request but grpc.Health wait until g opens (the
// guest boot finished, package bootgate): the liveness probe answers as
// soon as the agent listens, nothing else acts on a half-set-up guest.
func WithBootGate(g *bootgate.Gate) Option {
	return func(s *Server) { s.gate = g }
}

// Option configures New.
type Option func(*Server)

// WithMaxPending sets the cap on requests in flight (MaxPendingRequests by
// default; tests use a smaller one).
func WithMaxPending(n int) Option {
	return func(s *Server) {
		if n > 0 {
			s.maxPending = int64(n)
		}
	}
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
func New(agent pb.AgentServiceService, health pb.HealthService, m *metrics.Registry, log *slog.Logger, opts ...Option) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{log: log, metrics: m, direct: directMethods(agent), maxPending: MaxPendingRequests}
	for _, o := range opts {
		o(s)
	}
	sopts := []ttrpc.ServerOpt{ttrpc.WithUnaryServerInterceptor(s.intercept(m))}
	if sr, ok := agent.(streamread.Reader); ok {
		// ReadStdout/ReadStderr are answered in front of ttrpc, the reply
		// frame written straight from the read buffer (agent/streamread).
		cfg := streamread.Config{Reader: sr, Observe: s.observe(m), Record: s.record(m), Log: log}
		sopts = append(sopts, ttrpc.WithServerHandshaker(handshaker(func(_ context.Context, c net.Conn) (net.Conn, any, error) {
			return streamread.Wrap(c, cfg), nil, nil
		})))
	}
	ts, err := ttrpc.NewServer(sopts...)
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
	if s.metrics != nil {
		s.metrics.Gauge("keel_rpcs_pending", "RPCs in flight (counted against the agent-wide cap).", func() float64 { return float64(s.pending.Load()) })
		s.metrics.Gauge("keel_rpcs_rejected", "RPCs answered ResourceExhausted because the agent-wide cap on RPCs in flight was reached.", func() float64 { return float64(s.rejected.Load()) })
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

// MaxPending reports the cap on requests in flight.
func (s *Server) MaxPending() int { return int(s.maxPending) }

// Pending reports the requests in flight counted against the cap, and how
// many were rejected at it.
func (s *Server) Pending() (pending, rejected int64) { return s.pending.Load(), s.rejected.Load() }

// admit counts a request against the cap; false means it is over the cap
// and must be answered at once, holding nothing.
func (s *Server) admit(method string) bool {
	if exempt(method) {
		return true
	}
	if s.pending.Add(1) > s.maxPending {
		s.pending.Add(-1)
		if n := s.rejected.Add(1); n&(n-1) == 0 { // log at powers of two
			s.log.Warn("rpc rejected: too many requests pending", "method", method, "max", s.maxPending, "rejected", n)
		}
		return false
	}
	return true
}

func (s *Server) intercept(m *metrics.Registry) ttrpc.UnaryServerInterceptor {
	observe := s.observe(m)
	return func(ctx context.Context, um ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, h ttrpc.Method) (interface{}, error) {
		if d, ok := s.direct[info.FullMethod]; ok {
			h = d
		}
		return observe(ctx, info.FullMethod, func(ctx context.Context) (any, error) { return h(ctx, um) })
	}
}

// observe runs one RPC with the accounting every RPC gets: the cap on
// requests in flight, metrics, logging and panic recovery. The ttrpc
// interceptor and agent/streamread both call it.
func (s *Server) observe(m *metrics.Registry) streamread.Observer {
	return func(ctx context.Context, method string, call func(context.Context) (any, error)) (resp any, err error) {
		if !s.admit(method) {
			return nil, status.Errorf(codes.ResourceExhausted, "%s: %d requests already pending in the agent (MaxPendingRequests); retry when some complete", method, s.maxPending)
		}
		if !exempt(method) {
			defer s.pending.Add(-1)
		}
		start := time.Now()
		record := s.record(m)
		defer func() {
			if r := recover(); r != nil {
				s.log.Error("rpc handler panicked", "method", method, "panic", r, "stack", string(debug.Stack()))
				resp, err = nil, status.Errorf(codes.Internal, "%s: internal error (handler panicked: %v)", method, r)
			}
			record(ctx, method, time.Since(start), err)
		}()
		if s.gate != nil && !strings.HasPrefix(method, "/grpc.Health/") {
			if err := s.gate.Wait(ctx); err != nil {
				return nil, status.Errorf(errdefs.Code(err), "%s: %v", method, err)
			}
		}
		return call(ctx)
	}
}

// record records one RPC's latency and outcome in m and the log.
func (s *Server) record(m *metrics.Registry) streamread.Recorder {
	return func(ctx context.Context, method string, d time.Duration, err error) {
		if m != nil {
			m.ObserveRPC(method, d, err != nil)
		}
		if err != nil {
			lvl := slog.LevelWarn
			if status.Code(err) == codes.Unimplemented {
				lvl = slog.LevelDebug
			}
			s.log.Log(ctx, lvl, "rpc failed", "method", method, "duration", d, "err", err)
		} else {
			s.log.Debug("rpc", "method", method, "duration", d)
		}
	}
}

// handshaker adapts a function to ttrpc.Handshaker.
type handshaker func(ctx context.Context, c net.Conn) (net.Conn, any, error)

func (h handshaker) Handshake(ctx context.Context, c net.Conn) (net.Conn, any, error) {
	return h(ctx, c)
}
