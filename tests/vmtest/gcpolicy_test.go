package vmtest

import (
	"context"
	"testing"

	"github.com/keelvm/keel/agent/gcpolicy"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/promtext"
)

// gcMetric returns the named metric of the agent's GetMetrics.
func gcMetric(ctx context.Context, t *testing.T, a pb.AgentServiceService) func(string) float64 {
	t.Helper()
	m, err := a.GetMetrics(ctx, &pb.GetMetricsRequest{})
	if err != nil {
		t.Fatalf("GetMetrics: %v", err)
	}
	return func(name string) float64 {
		v, ok := promtext.Value(m.Metrics, name)
		if !ok {
			t.Fatalf("metrics lack %s", name)
		}
		return v
	}
}

// gcPolicyAsPID1 checks, over GetMetrics, that the agent as PID 1 runs its
// GC policy (agent/gcpolicy) with the headroom of the guest's memory: it
// reads the guest's size from sysinfo(2) before /proc is mounted, so the
// headroom read back must match MemTotal of the guest's /proc/meminfo.
func gcPolicyAsPID1(ctx context.Context, t *testing.T, a pb.AgentServiceService) {
	t.Helper()
	get := gcMetric(ctx, t, a)
	memTotal := get(`keel_guest_meminfo_bytes{item="MemTotal"}`)
	pct, headroom := get("keel_agent_go_gc_percent"), get("keel_agent_go_gc_headroom_bytes")
	t.Logf("guest MemTotal %v: GOGC %v, headroom %v, live heap %v", memTotal, pct, headroom, get("keel_agent_go_heap_live_bytes"))
	if get("keel_agent_go_gc_policy_adaptive") != 1 {
		t.Errorf("GC policy not running in the guest (no GOGC on the kernel command line)")
	}
	if want := float64(gcpolicy.Headroom(uint64(memTotal))); headroom != want {
		t.Errorf("GC headroom %v, want %v for MemTotal %v", headroom, want, memTotal)
	}
	if pct < gcpolicy.MinPercent || pct > gcpolicy.MaxPercent {
		t.Errorf("GOGC %v outside the policy's [%d, %d]", pct, gcpolicy.MinPercent, gcpolicy.MaxPercent)
	}
}

// gcFromCmdline checks that GOGC and GOMEMLIMIT words on the kernel command
// line (which the kernel hands to init as environment) win over the
// agent's GC policy: the runtime uses them and the policy is off.
func gcFromCmdline(ctx context.Context, t *testing.T, a pb.AgentServiceService, gogc int, memLimit uint64) {
	t.Helper()
	get := gcMetric(ctx, t, a)
	if got := get("keel_agent_go_gc_percent"); got != float64(gogc) {
		t.Errorf("GOGC %v, want %d from the kernel command line", got, gogc)
	}
	if got := get("keel_agent_go_memory_limit_bytes"); got != float64(memLimit) {
		t.Errorf("memory limit %v, want %d from the kernel command line", got, memLimit)
	}
	if get("keel_agent_go_gc_policy_adaptive") != 0 {
		t.Errorf("GC policy running although GOGC is on the kernel command line")
	}
}
