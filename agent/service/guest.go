package service

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keelvm/keel/agent/errdefs"
	"github.com/keelvm/keel/agent/metrics"
	"github.com/keelvm/keel/agent/version"
	pb "github.com/keelvm/keel/protocol/grpc"
)

// Guest answers the RPCs about the guest and the agent itself.
type Guest struct {
	// SysfsRoot is where sysfs is mounted ("/sys" when empty); tests point
	// it at a fake tree.
	SysfsRoot string
	// DeviceHandlers and StorageHandlers name the handlers actually
	// registered, as GetGuestDetails reports them.
	DeviceHandlers  []string
	StorageHandlers []string
	// ExtraFeatures are reported verbatim in AgentDetails.extra_features;
	// GetGuestDetails fails with its error (it may wait, bounded by ctx).
	ExtraFeatures func(context.Context) ([]string, error)
	// Metrics backs GetMetrics; nil leaves GetMetrics unimplemented.
	Metrics *metrics.Registry
	// IsInit says whether the agent is PID 1 (os.Getpid()==1 when nil).
	IsInit func() bool
}

func (g *Guest) sysfs(p string) string {
	root := g.SysfsRoot
	if root == "" {
		root = "/sys"
	}
	return root + p
}

// GetGuestDetails reports the memory block size, memory probe support and
// what this agent can do.
func (g *Guest) GetGuestDetails(ctx context.Context, req *pb.GuestDetailsRequest) (*pb.GuestDetailsResponse, error) {
	details, err := g.agentDetails(ctx)
	if err != nil {
		return nil, errdefs.ToStatus(err)
	}
	resp := &pb.GuestDetailsResponse{AgentDetails: details}
	if req.GetMemBlockSize() {
		n, err := g.memBlockSize()
		if err != nil {
			return nil, status.Errorf(codes.Internal, "mem_block_size: %v", err)
		}
		resp.MemBlockSizeBytes = n
	}
	if req.GetMemHotplugProbe() {
		_, err := os.Stat(g.sysfs("/devices/system/memory/probe"))
		resp.SupportMemHotplugProbe = err == nil
	}
	return resp, nil
}

// memBlockSize reads block_size_bytes, which the kernel prints in hex
// without a 0x prefix. A guest without memory hotplug has no such file;
// Kata reports 0 then, and so do we.
func (g *Guest) memBlockSize() (uint64, error) {
	data, err := os.ReadFile(g.sysfs("/devices/system/memory/block_size_bytes"))
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(data))
	n, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("unable to parse block_size_bytes %q: %w", s, err)
	}
	return n, nil
}

func (g *Guest) agentDetails(ctx context.Context) (*pb.AgentDetails, error) {
	isInit := os.Getpid() == 1
	if g.IsInit != nil {
		isInit = g.IsInit()
	}
	d := &pb.AgentDetails{
		Version:         version.Version,
		InitDaemon:      isInit,
		DeviceHandlers:  append([]string{}, g.DeviceHandlers...),
		StorageHandlers: append([]string{}, g.StorageHandlers...),
		SupportsSeccomp: seccompSupported(),
	}
	if g.ExtraFeatures != nil {
		extra, err := g.ExtraFeatures(ctx)
		if err != nil {
			return nil, err
		}
		d.ExtraFeatures = extra
	}
	return d, nil
}

// seccompSupported reports whether this build can apply seccomp profiles and
// the running kernel offers seccomp filters ("Seccomp:" appears in
// /proc/self/status only with CONFIG_SECCOMP), as Kata defines the field.
func seccompSupported() bool {
	if !builtWithSeccomp {
		return false
	}
	data, err := os.ReadFile("/proc/self/status")
	return err == nil && strings.Contains(string(data), "\nSeccomp:")
}

// GetMetrics renders the agent's metrics in Prometheus text format.
func (g *Guest) GetMetrics(context.Context, *pb.GetMetricsRequest) (*pb.Metrics, error) {
	if g.Metrics == nil {
		return nil, unimplemented("GetMetrics")
	}
	return &pb.Metrics{Metrics: g.Metrics.Render()}, nil
}
