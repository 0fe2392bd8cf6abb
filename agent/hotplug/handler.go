package hotplug

import (
	"context"
	"fmt"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/keelvm/keel/agent/errdefs"
	pb "github.com/keelvm/keel/protocol/grpc"
)

// MaxProbeAddrs bounds MemHotplugByProbe: a guest has at most a few
// thousand memory blocks, so a longer list is a bad request.
const MaxProbeAddrs = 4096

// Handler serves OnlineCPUMem and MemHotplugByProbe. The zero value acts
// on /sys.
type Handler struct {
	Onliner Onliner
	// CPUSets, when set, is told after CPUs came online, so containers'
	// cgroup v1 cpusets include them (agent/container.Sandbox).
	CPUSets CPUSetRefresher
	Log     *slog.Logger
}

// CPUSetRefresher updates containers' cpusets to the online CPUs.
type CPUSetRefresher interface {
	RefreshCPUSets() error
}

// OnlineCPUMem implements grpc.AgentService/OnlineCPUMem: with nb_cpus > 0
// it onlines CPUs until nb_cpus are online (the runtime sends the new
// total) and refreshes the containers' cpusets (CPUSets), and unless
// cpu_only it onlines every offline memory block. It always answers once
// done (Kata's agent ignores wait too).
func (h *Handler) OnlineCPUMem(ctx context.Context, req *pb.OnlineCPUMemRequest) (*emptypb.Empty, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "online cpu mem: empty request")
	}
	log := h.Log
	if log == nil {
		log = slog.Default()
	}
	if req.NbCpus > 0 {
		n, err := h.Onliner.OnlineCPUs(ctx, int(req.NbCpus))
		if err != nil {
			return nil, errdefs.ToStatus(fmt.Errorf("online cpu mem: nb_cpus: %w", err))
		}
		log.Info("CPUs online", "nb_cpus", req.NbCpus, "online", n)
		if h.CPUSets != nil {
			if err := h.CPUSets.RefreshCPUSets(); err != nil {
				return nil, errdefs.ToStatus(fmt.Errorf("online cpu mem: unable to give containers the online CPUs: %w", err))
			}
		}
	}
	if !req.CpuOnly {
		n, err := h.Onliner.OnlineMemory(true)
		if err != nil {
			return nil, errdefs.ToStatus(fmt.Errorf("online cpu mem: memory: %w", err))
		}
		log.Info("memory blocks onlined", "blocks", n)
	}
	return &emptypb.Empty{}, nil
}

// MemHotplugByProbe implements grpc.AgentService/MemHotplugByProbe.
func (h *Handler) MemHotplugByProbe(ctx context.Context, req *pb.MemHotplugByProbeRequest) (*emptypb.Empty, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "mem hotplug by probe: empty request")
	}
	if len(req.MemHotplugProbeAddr) > MaxProbeAddrs {
		return nil, status.Errorf(codes.InvalidArgument, "mem hotplug by probe: memHotplugProbeAddr: %d addresses exceed %d", len(req.MemHotplugProbeAddr), MaxProbeAddrs)
	}
	if err := h.Onliner.Probe(req.MemHotplugProbeAddr); err != nil {
		return nil, errdefs.ToStatus(fmt.Errorf("mem hotplug by probe: %w", err))
	}
	return &emptypb.Empty{}, nil
}
