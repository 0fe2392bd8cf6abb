// Package service assembles the agent's ttrpc services: grpc.AgentService
// from the handler structs of the domain packages, and grpc.Health.
//
// Each domain package exports a handler struct whose methods have the
// generated AgentService signatures. Service embeds them one level deep and
// Unimplemented two levels deep, so Go's method promotion picks a handler's
// method when one exists and the Unimplemented fallback otherwise. Two
// handlers claiming the same RPC make the promotion ambiguous, which the
// compile-time interface check below turns into a build error.
package service

import (
	"context"
	"reflect"
	"sort"

	"github.com/keelvm/keel/agent/bootgate"
	"github.com/keelvm/keel/agent/containers"
	"github.com/keelvm/keel/agent/copyfile"
	"github.com/keelvm/keel/agent/guestops"
	"github.com/keelvm/keel/agent/hotplug"
	"github.com/keelvm/keel/agent/networks"
	"github.com/keelvm/keel/agent/oom"
	"github.com/keelvm/keel/agent/storage"
	"github.com/keelvm/keel/agent/swap"
	"github.com/keelvm/keel/agent/version"
	"github.com/keelvm/keel/agent/volume"
	pb "github.com/keelvm/keel/protocol/grpc"
)

// fallback puts Unimplemented one level deeper than the handlers.
type fallback struct{ Unimplemented }

// Service is the agent's grpc.AgentService.
type Service struct {
	fallback
	*Guest
	*Containers // sandbox, container, process and stdio RPCs
	*GuestOps   // SetGuestDateTime, ReseedRandomDev
	*FileCopier // CopyFile
	*OOM        // GetOOMEvent
	*Hotplug    // OnlineCPUMem, MemHotplugByProbe
	*Swap       // AddSwapPath
	*SwapPCI    // AddSwap
	*Volumes    // GetVolumeStats, ResizeVolume
	*Networks   // interfaces, routes, ARP neighbours, iptables
	*Storage    // UpdateEphemeralMounts, RemoveStaleVirtiofsShareMounts
}

// Aliases name the embedded handlers (two packages call theirs Handler).
type (
	Containers = containers.RPC
	GuestOps   = guestops.Handler
	FileCopier = copyfile.Handler
	OOM        = oom.Watcher
	Hotplug    = hotplug.Handler
	Swap       = swap.Handler
	SwapPCI    = swap.PCIHandler
	Volumes    = volume.Handler
	Networks   = networks.Handler
	Storage    = storage.Handler
)

var _ pb.AgentServiceService = (*Service)(nil)

// Handlers are the domain handler structs Service is built from.
type Handlers struct {
	Guest      *Guest
	Containers *containers.RPC // required
	GuestOps   *guestops.Handler
	CopyFile   *copyfile.Handler
	OOM        *oom.Watcher
	Hotplug    *hotplug.Handler
	Swap       *swap.Handler
	SwapPCI    *swap.PCIHandler // nil: AddSwap answers Unimplemented
	Volumes    *volume.Handler
	Network    *networks.Handler // nil: the network RPCs answer Unavailable
	Storage    *storage.Handler  // nil: the storage RPCs answer Unavailable
}

// New assembles a Service. Containers is required; any other handler left
// nil gets its zero value, which every handler package documents as the
// production default (the OOM watcher gets a fresh oom.New()).
func New(h Handlers) *Service {
	if h.Containers == nil {
		// An embedded nil handler would turn its RPCs into nil-pointer
		// panics instead of answers: refuse to build such a service.
		panic("service.New: Handlers.Containers is required")
	}
	s := &Service{Guest: h.Guest, Containers: h.Containers, GuestOps: h.GuestOps, FileCopier: h.CopyFile, OOM: h.OOM,
		Hotplug: h.Hotplug, Swap: h.Swap, SwapPCI: h.SwapPCI, Volumes: h.Volumes, Networks: h.Network, Storage: h.Storage}
	if s.Guest == nil {
		s.Guest = &Guest{}
	}
	if s.GuestOps == nil {
		s.GuestOps = &guestops.Handler{}
	}
	if s.FileCopier == nil {
		s.FileCopier = &copyfile.Handler{}
	}
	if s.OOM == nil {
		s.OOM = oom.New()
	}
	if s.Hotplug == nil {
		s.Hotplug = &hotplug.Handler{}
	}
	if s.Swap == nil {
		s.Swap = &swap.Handler{}
	}
	if s.SwapPCI == nil {
		s.SwapPCI = &swap.PCIHandler{}
	}
	if s.Volumes == nil {
		s.Volumes = &volume.Handler{}
	}
	if s.Networks == nil {
		s.Networks = &networks.Handler{}
	}
	if s.Storage == nil {
		s.Storage = &storage.Handler{}
	}
	return s
}

// Implemented lists, sorted, the AgentService RPCs that some handler of
// Service implements (everything else answers Unimplemented). README's RPC
// table is checked against it.
func Implemented() []string {
	api := reflect.TypeOf((*pb.AgentServiceService)(nil)).Elem()
	st := reflect.TypeOf(Service{})
	var out []string
	for i := 0; i < st.NumField(); i++ {
		f := st.Field(i)
		if f.Type == reflect.TypeOf(fallback{}) {
			continue
		}
		for j := 0; j < api.NumMethod(); j++ {
			if _, ok := f.Type.MethodByName(api.Method(j).Name); ok {
				out = append(out, api.Method(j).Name)
			}
		}
	}
	sort.Strings(out)
	return out
}

// Health is grpc.Health.
type Health struct {
	// Boot, when set, is the guest boot's gate: once it failed (the boot
	// failed or got stuck; the guest is powering off) Check answers
	// NOT_SERVING. Nil: always SERVING.
	Boot *bootgate.Gate
}

var _ pb.HealthService = Health{}

// Check answers SERVING: the agent answers RPCs as soon as it listens
// (they wait for the boot), unless the boot failed.
func (h Health) Check(context.Context, *pb.CheckRequest) (*pb.HealthCheckResponse, error) {
	if h.Boot != nil && h.Boot.Failed() {
		return &pb.HealthCheckResponse{Status: pb.HealthCheckResponse_NOT_SERVING}, nil
	}
	return &pb.HealthCheckResponse{Status: pb.HealthCheckResponse_SERVING}, nil
}

// Version reports the API and agent versions.
func (Health) Version(context.Context, *pb.CheckRequest) (*pb.VersionCheckResponse, error) {
	return &pb.VersionCheckResponse{GrpcVersion: version.APIVersion, AgentVersion: version.Version}, nil
}
