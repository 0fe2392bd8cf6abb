// Package containers adapts the container domain (agent/container) to Kata's
// grpc.AgentService: sandbox, container, process and stdio RPCs. Handlers
// are thin: validate, convert (agent/ociconv), call the domain, and turn its
// errors (of agent/errdefs classes) into gRPC statuses with errdefs.ToStatus;
// the message names the field.
package containers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/keelvm/keel/agent/container"
	"github.com/keelvm/keel/agent/devices"
	"github.com/keelvm/keel/agent/errdefs"
	"github.com/keelvm/keel/agent/ociconv"
	"github.com/keelvm/keel/agent/stdio"
	"github.com/keelvm/keel/agent/storage"
	"github.com/keelvm/keel/agent/streamread"
	"github.com/keelvm/keel/init/kmod"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/protocol/readstream"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Defaults of Options.
const (
	// DefaultPassFDTimeout is how long CreateContainer/ExecProcess wait for
	// a passfd stdio connection named by a *_port field.
	DefaultPassFDTimeout = 10 * time.Second
	// DefaultExecIOLinger keeps an exec's stdio readable after WaitProcess
	// collected its status (the host may still be draining it).
	DefaultExecIOLinger = 10 * time.Second
)

// PassFD hands out the passthrough stdio connections the host opened
// (agent/passfd.Listener implements it).
type PassFD interface {
	Take(port uint32, timeout time.Duration) (net.Conn, error)
}

// Options configures New.
type Options struct {
	Sandbox *container.Sandbox
	// PassFD serves stdin_port/stdout_port/stderr_port; nil refuses
	// non-zero ports with Unimplemented.
	PassFD        PassFD
	PassFDTimeout time.Duration
	// PipeSize is agent.container_pipe_size (0 = kernel default).
	PipeSize int
	// ExecIOLinger: see DefaultExecIOLinger.
	ExecIOLinger time.Duration
	// OnDestroySandbox runs after DestroySandbox removed every container
	// (the agent powers the guest off when it is PID 1).
	OnDestroySandbox func()
	// Devices hands CreateContainer's devices to the container; nil
	// refuses them with Unimplemented.
	Devices *devices.Manager
	// Storages mounts CreateSandbox's and CreateContainer's storages; nil
	// refuses them with Unimplemented.
	Storages *storage.Manager
	Log      *slog.Logger
}

// RPC implements the container, process and stdio RPCs of
// pb.AgentServiceService.
type RPC struct {
	o Options
}

// New returns the handlers. o.Sandbox is required.
func New(o Options) *RPC {
	if o.PassFDTimeout == 0 {
		o.PassFDTimeout = DefaultPassFDTimeout
	}
	if o.ExecIOLinger == 0 {
		o.ExecIOLinger = DefaultExecIOLinger
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return &RPC{o: o}
}

func invalidf(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

func unimplementedf(format string, args ...any) error {
	return status.Errorf(codes.Unimplemented, format, args...)
}

var empty = &emptypb.Empty{}

// CreateSandbox records hostname, DNS, pid namespace sharing, loads kernel
// modules and sets up the sandbox storages.
func (r *RPC) CreateSandbox(ctx context.Context, req *pb.CreateSandboxRequest) (*emptypb.Empty, error) {
	if r.o.Sandbox == nil {
		return nil, errNoSandbox
	}
	if len(req.Storages) > 0 && r.o.Storages == nil {
		return nil, unimplementedf("storages: %d sandbox storages given; storage handling is not enabled", len(req.Storages))
	}
	sc := container.SandboxConfig{ID: req.SandboxId, Hostname: req.Hostname, DNS: req.Dns, SandboxPidns: req.SandboxPidns, GuestHookPath: req.GuestHookPath}
	for i, m := range req.KernelModules {
		if m == nil || m.Name == "" || strings.ContainsAny(m.Name, "/\x00 ") {
			return nil, invalidf("kernel_modules[%d].name: must be a module name", i)
		}
		sc.KernelModules = append(sc.KernelModules, kmod.ModuleSpec{Name: m.Name, Params: strings.Join(m.Parameters, " ")})
	}
	// The sandbox first: a second CreateSandbox fails there, before it
	// could touch the storages the running sandbox's containers use.
	if err := r.o.Sandbox.Create(sc); err != nil {
		return nil, errdefs.ToStatus(err)
	}
	if len(req.Storages) > 0 {
		// Add rolls back what it mounted itself; the sandbox goes too.
		if err := r.o.Storages.Add(ctx, "", "storages", storage.FromPB(req.Storages)); err != nil {
			if derr := r.o.Sandbox.Destroy(ctx); derr != nil {
				r.o.Log.Warn("rolling back the sandbox", "err", derr)
			}
			return nil, errdefs.ToStatus(err)
		}
	}
	return empty, nil
}

// DestroySandbox removes every container, then runs OnDestroySandbox.
func (r *RPC) DestroySandbox(ctx context.Context, _ *pb.DestroySandboxRequest) (*emptypb.Empty, error) {
	if r.o.Sandbox == nil {
		return nil, errNoSandbox
	}
	err := r.o.Sandbox.Destroy(ctx)
	if r.o.Storages != nil {
		if serr := r.o.Storages.Close(); serr != nil {
			r.o.Log.Warn("unmounting storages", "err", serr)
		}
	}
	if r.o.OnDestroySandbox != nil {
		r.o.OnDestroySandbox()
	}
	return empty, errdefs.ToStatus(err)
}

// createFault, when set (tests), runs in CreateContainer once its
// storages are acquired: a test makes it panic.
var createFault func()

// newIO creates a process's stdio and attaches the passfd streams.
func (r *RPC) newIO(terminal bool, in, out, errp uint32) (_ *stdio.IO, retErr error) {
	if (in|out|errp) != 0 && r.o.PassFD == nil {
		return nil, unimplementedf("stdin_port/stdout_port/stderr_port: the passfd listener is not enabled")
	}
	s, err := stdio.New(stdio.Options{Terminal: terminal, Stdin: true, PipeSize: r.o.PipeSize})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "unable to create stdio: %v", err)
	}
	defer func() {
		if retErr != nil {
			s.Close()
		}
	}()
	for _, a := range []struct {
		field  string
		port   uint32
		attach func(net.Conn) error
	}{{"stdin_port", in, s.AttachStdin}, {"stdout_port", out, s.AttachStdout}, {"stderr_port", errp, s.AttachStderr}} {
		if a.port == 0 {
			continue
		}
		conn, err := r.o.PassFD.Take(a.port, r.o.PassFDTimeout)
		if err != nil {
			return nil, invalidf("%s %d: %v", a.field, a.port, err)
		}
		if err := a.attach(conn); err != nil {
			conn.Close()
			return nil, invalidf("%s %d: %v", a.field, a.port, err)
		}
	}
	return s, nil
}

// CreateContainer creates the container and its (not yet started) init.
func (r *RPC) CreateContainer(ctx context.Context, req *pb.CreateContainerRequest) (_ *emptypb.Empty, retErr error) {
	if r.o.Sandbox == nil {
		return nil, errNoSandbox
	}
	if err := container.ValidateID("container_id", req.ContainerId); err != nil {
		return nil, errdefs.ToStatus(err)
	}
	if req.ExecId != "" {
		if err := container.ValidateID("exec_id", req.ExecId); err != nil {
			return nil, errdefs.ToStatus(err)
		}
	}
	if len(req.Storages) > 0 && r.o.Storages == nil {
		return nil, unimplementedf("storages: %d container storages given; storage handling is not enabled", len(req.Storages))
	}
	if len(req.Devices) > 0 && r.o.Devices == nil {
		return nil, unimplementedf("devices: %d devices given; device handling is not enabled", len(req.Devices))
	}
	if len(req.SharedMounts) > 0 {
		return nil, unimplementedf("shared_mounts: not supported")
	}
	// string_user is for Windows guests; Linux uses OCI.process.user.
	spec, err := ociconv.FromPB(req.OCI)
	if err != nil {
		return nil, errdefs.ToStatus(err)
	}
	if err := ociconv.Validate(spec); err != nil {
		return nil, errdefs.ToStatus(err)
	}
	if _, err := r.o.Sandbox.Container(req.ContainerId); err == nil {
		return nil, status.Errorf(codes.AlreadyExists, "container_id %q: already exists", req.ContainerId)
	}
	var refs *storage.Refs
	if len(req.Storages) > 0 {
		// Mounted before the container is created: its rootfs may be one.
		// This create holds them until it succeeded or rolled back.
		if refs, err = r.o.Storages.Acquire(ctx, req.ContainerId, "storages", storage.FromPB(req.Storages)); err != nil {
			return nil, errdefs.ToStatus(err)
		}
	}
	dropStorages := func() {
		if err := r.o.Storages.Drop(refs); err != nil {
			r.o.Log.Warn("releasing storages of a failed create", "container_id", req.ContainerId, "err", err)
		}
	}
	// Until handed over to Sandbox.CreateContainer's Commit/Rollback,
	// every way out drops them, a panic (recovered by the server, with
	// retErr nil) included.
	handedOver := false
	defer func() {
		if !handedOver {
			dropStorages()
		}
	}()
	if createFault != nil {
		createFault()
	}
	if len(req.Devices) > 0 {
		if err := r.o.Devices.Apply(ctx, devicesFromPB(req.Devices), spec); err != nil {
			return nil, errdefs.ToStatus(err)
		}
	}
	s, err := r.newIO(spec.Process.Terminal, req.StdinPort, req.StdoutPort, req.StderrPort)
	if err != nil {
		return nil, err
	}
	handedOver = true
	_, err = r.o.Sandbox.CreateContainer(container.ContainerConfig{
		ID: req.ContainerId, ExecID: req.ExecId, Spec: spec, SpecOwned: true, SandboxPidns: req.SandboxPidns, IO: s,
		// After a launch timeout the rollback may still run inside the
		// storages: they are dropped when it ended, not when this RPC
		// answers.
		Commit: func() { r.o.Storages.Keep(req.ContainerId, refs) }, Rollback: dropStorages,
	})
	if err != nil {
		return nil, errdefs.ToStatus(err)
	}
	return empty, nil
}

func devicesFromPB(in []*pb.Device) []devices.Device {
	out := make([]devices.Device, len(in))
	for i, d := range in {
		if d != nil {
			out[i] = devices.Device{ID: d.Id, Type: d.Type, VMPath: d.VmPath, ContainerPath: d.ContainerPath, Options: d.Options}
		}
	}
	return out
}

// errNoSandbox answers when New was given no Sandbox (a wiring bug; the
// handlers must not panic on it).
var errNoSandbox = status.Error(codes.Unavailable, "container manager is not configured")

func (r *RPC) container(id string) (*container.Container, error) {
	if r.o.Sandbox == nil {
		return nil, errNoSandbox
	}
	c, err := r.o.Sandbox.Container(id)
	return c, errdefs.ToStatus(err)
}

// StartContainer releases the init process.
func (r *RPC) StartContainer(ctx context.Context, req *pb.StartContainerRequest) (*emptypb.Empty, error) {
	c, err := r.container(req.ContainerId)
	if err != nil {
		return nil, err
	}
	return empty, errdefs.ToStatus(c.Start())
}

// RemoveContainer kills and removes the container; timeout is in seconds,
// 0 waits without limit.
func (r *RPC) RemoveContainer(ctx context.Context, req *pb.RemoveContainerRequest) (*emptypb.Empty, error) {
	if r.o.Sandbox == nil {
		return nil, errNoSandbox
	}
	if err := r.o.Sandbox.RemoveContainer(ctx, req.ContainerId, time.Duration(req.Timeout)*time.Second); err != nil {
		return nil, errdefs.ToStatus(err)
	}
	if r.o.Storages != nil {
		// The container's storages lose a user; the last one unmounts.
		if err := r.o.Storages.Release(req.ContainerId); err != nil {
			r.o.Log.Warn("releasing container storages", "container_id", req.ContainerId, "err", err)
		}
	}
	return empty, nil
}

// ExecProcess starts a process in a running container; a missing program
// fails at once with InvalidArgument.
func (r *RPC) ExecProcess(ctx context.Context, req *pb.ExecProcessRequest) (*emptypb.Empty, error) {
	c, err := r.container(req.ContainerId)
	if err != nil {
		return nil, err
	}
	if err := container.ValidateID("exec_id", req.ExecId); err != nil {
		return nil, errdefs.ToStatus(err)
	}
	sp, err := ociconv.ProcessFromPB(req.Process, "process")
	if err != nil {
		return nil, errdefs.ToStatus(err)
	}
	if err := ociconv.ValidateProcess(sp, "process"); err != nil {
		return nil, errdefs.ToStatus(err)
	}
	if _, err := c.Process(req.ExecId); err == nil {
		return nil, status.Errorf(codes.AlreadyExists, "exec_id %q: already exists in container %q", req.ExecId, req.ContainerId)
	}
	s, err := r.newIO(sp.Terminal, req.StdinPort, req.StdoutPort, req.StderrPort)
	if err != nil {
		return nil, err
	}
	if _, err := c.Exec(req.ExecId, sp, s); err != nil { // closes s
		return nil, errdefs.ToStatus(err)
	}
	return empty, nil
}

// SignalProcess signals a process (empty exec_id = the container's init;
// SIGKILL/SIGTERM to init reach every process of a container without its
// own pid namespace).
func (r *RPC) SignalProcess(ctx context.Context, req *pb.SignalProcessRequest) (*emptypb.Empty, error) {
	c, err := r.container(req.ContainerId)
	if err != nil {
		return nil, err
	}
	if req.Signal == 0 || req.Signal > 64 {
		return nil, invalidf("signal %d: must be in [1, 64]", req.Signal)
	}
	return empty, errdefs.ToStatus(c.Signal(req.ExecId, unix.Signal(req.Signal)))
}

// WaitProcess waits for a process and returns its status (exit code or
// 128+signal). An exec'd process is forgotten afterwards.
func (r *RPC) WaitProcess(ctx context.Context, req *pb.WaitProcessRequest) (*pb.WaitProcessResponse, error) {
	c, err := r.container(req.ContainerId)
	if err != nil {
		return nil, err
	}
	p, err := c.Process(req.ExecId)
	if err != nil {
		return nil, errdefs.ToStatus(err)
	}
	st, err := p.Wait(ctx)
	if err != nil {
		return nil, errdefs.ToStatus(err)
	}
	c.RetireProcess(p, r.o.ExecIOLinger)
	return &pb.WaitProcessResponse{Status: int32(st.Code)}, nil
}

// PauseContainer freezes the container.
func (r *RPC) PauseContainer(ctx context.Context, req *pb.PauseContainerRequest) (*emptypb.Empty, error) {
	c, err := r.container(req.ContainerId)
	if err != nil {
		return nil, err
	}
	return empty, errdefs.ToStatus(c.Pause())
}

// ResumeContainer thaws the container.
func (r *RPC) ResumeContainer(ctx context.Context, req *pb.ResumeContainerRequest) (*emptypb.Empty, error) {
	c, err := r.container(req.ContainerId)
	if err != nil {
		return nil, err
	}
	return empty, errdefs.ToStatus(c.Resume())
}

// UpdateContainer applies new cgroup resources.
func (r *RPC) UpdateContainer(ctx context.Context, req *pb.UpdateContainerRequest) (*emptypb.Empty, error) {
	c, err := r.container(req.ContainerId)
	if err != nil {
		return nil, err
	}
	res, err := ociconv.ResourcesFromPB(req.Resources, "resources")
	if err != nil {
		return nil, errdefs.ToStatus(err)
	}
	return empty, errdefs.ToStatus(c.Update(res))
}

// StatsContainer returns cgroup and network statistics.
func (r *RPC) StatsContainer(ctx context.Context, req *pb.StatsContainerRequest) (*pb.StatsContainerResponse, error) {
	c, err := r.container(req.ContainerId)
	if err != nil {
		return nil, err
	}
	st, err := c.Stats()
	if err != nil {
		return nil, errdefs.ToStatus(err)
	}
	return statsToPB(st), nil
}

func (r *RPC) stdio(cid, eid string) (*stdio.IO, error) {
	c, err := r.container(cid)
	if err != nil {
		return nil, err
	}
	p, err := c.StdioProcess(eid)
	if err != nil {
		return nil, errdefs.ToStatus(err)
	}
	if p.IO() == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "exec_id %q: process has no stdio", eid)
	}
	return p.IO(), nil
}

// WriteStdin writes to the process's stdin; empty data closes it.
func (r *RPC) WriteStdin(ctx context.Context, req *pb.WriteStreamRequest) (*pb.WriteStreamResponse, error) {
	s, err := r.stdio(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, err
	}
	n, err := s.Write(ctx, req.Data)
	if err != nil {
		return nil, errdefs.ToStatus(fmt.Errorf("stdin: %w", err))
	}
	return &pb.WriteStreamResponse{Len: uint32(n)}, nil
}

// read serves ReadStdout/ReadStderr; the data is returned after headroom
// spare bytes (see stdio.IO.ReadStdoutWithHeadroom). Empty data with a nil
// error is Kata's end of stream.
func (r *RPC) read(ctx context.Context, req *pb.ReadStreamRequest, stderr bool, headroom int, bufs stdio.Buffers) ([]byte, error) {
	s, err := r.stdio(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, err
	}
	if req.Len == 0 {
		return nil, invalidf("len: must be > 0")
	}
	n := int(req.Len)
	if headroom > 0 {
		n = readstream.DataLen(n) // encoded in place: keep the buffers in their size class
	}
	var b []byte
	if stderr {
		b, err = s.ReadStderrInto(ctx, n, headroom, bufs)
	} else {
		b, err = s.ReadStdoutInto(ctx, n, headroom, bufs)
	}
	if errors.Is(err, io.EOF) {
		return nil, nil
	}
	if err != nil {
		return nil, errdefs.ToStatus(err)
	}
	return b, nil
}

// ReadStdout reads the process's stdout (or pty); empty data = EOF.
func (r *RPC) ReadStdout(ctx context.Context, req *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error) {
	b, err := r.read(ctx, req, false, 0, nil)
	if err != nil {
		return nil, err
	}
	return &pb.ReadStreamResponse{Data: b}, nil
}

// ReadStderr reads the process's stderr; empty data = EOF.
func (r *RPC) ReadStderr(ctx context.Context, req *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error) {
	b, err := r.read(ctx, req, true, 0, nil)
	if err != nil {
		return nil, err
	}
	return &pb.ReadStreamResponse{Data: b}, nil
}

// ReadStdoutEncoded is ReadStdout answering with a ReadStreamResponse
// encoded in place around the data (protocol/readstream): the data goes
// from the pipe into the buffer ttrpc sends, without the copy and the
// allocation of proto.Marshal. agent/server serves ReadStdout with it.
func (r *RPC) ReadStdoutEncoded(ctx context.Context, req *pb.ReadStreamRequest) (proto.Message, error) {
	return r.readEncoded(ctx, req, false)
}

// ReadStderrEncoded is ReadStdoutEncoded for stderr.
func (r *RPC) ReadStderrEncoded(ctx context.Context, req *pb.ReadStreamRequest) (proto.Message, error) {
	return r.readEncoded(ctx, req, true)
}

func (r *RPC) readEncoded(ctx context.Context, req *pb.ReadStreamRequest, stderr bool) (proto.Message, error) {
	b, err := r.read(ctx, req, stderr, readstream.Headroom, nil)
	if err != nil {
		return nil, err
	}
	if b == nil {
		return &pb.ReadStreamResponse{}, nil // end of stream
	}
	m, err := readstream.Encode(b)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "unable to encode the response: %v", err)
	}
	return m, nil
}

// ReadStream serves ReadStdout (stderr false) or ReadStderr for a caller
// that writes the reply frame itself (agent/streamread): the data comes
// after headroom spare bytes in a buffer taken from bufs, which the caller
// gives back once the reply is written. nil with a nil error is the end of
// the stream; errors are gRPC statuses.
func (r *RPC) ReadStream(ctx context.Context, req *pb.ReadStreamRequest, stderr bool, headroom int, bufs streamread.Buffers) ([]byte, error) {
	return r.read(ctx, req, stderr, headroom, bufs)
}

// ReadStreamNow is ReadStream for output already waiting: it never blocks
// and returns false when the caller must make the blocking ReadStream
// instead (nothing waiting, or anything to report but data: a bad request,
// an unknown process, the end of the stream).
func (r *RPC) ReadStreamNow(req *pb.ReadStreamRequest, stderr bool, headroom int, bufs streamread.Buffers) ([]byte, bool) {
	if req.Len == 0 {
		return nil, false
	}
	s, err := r.stdio(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, false
	}
	n := readstream.DataLen(int(req.Len))
	var b []byte
	if stderr {
		b, err = s.ReadStderrNow(n, headroom, bufs)
	} else {
		b, err = s.ReadStdoutNow(n, headroom, bufs)
	}
	return b, err == nil
}

// CloseStdin closes the process's stdin.
func (r *RPC) CloseStdin(ctx context.Context, req *pb.CloseStdinRequest) (*emptypb.Empty, error) {
	s, err := r.stdio(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, err
	}
	return empty, errdefs.ToStatus(s.CloseStdin())
}

// maxWinSize is the largest row or column count a pty takes (struct
// winsize holds unsigned shorts).
const maxWinSize = 0xffff

// TtyWinResize resizes the process's pty.
func (r *RPC) TtyWinResize(ctx context.Context, req *pb.TtyWinResizeRequest) (*emptypb.Empty, error) {
	switch {
	case req.Row > maxWinSize:
		return nil, invalidf("row %d: exceeds %d", req.Row, maxWinSize)
	case req.Column > maxWinSize:
		return nil, invalidf("column %d: exceeds %d", req.Column, maxWinSize)
	}
	s, err := r.stdio(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, err
	}
	return empty, errdefs.ToStatus(s.Resize(req.Row, req.Column))
}
