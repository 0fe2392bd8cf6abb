package main

import (
	"github.com/keelvm/keel/agent/gcpolicy"
	"github.com/keelvm/keel/agent/metrics"
)

// registerGCMetrics exports the GC settings the runtime really uses, read
// back from runtime/metrics, so the policy (or an explicit GOGC/GOMEMLIMIT)
// can be checked on a running agent through GetMetrics.
func registerGCMetrics(reg *metrics.Registry) {
	reg.Gauge("keel_agent_go_gc_percent", "Effective GOGC of the agent (agent/gcpolicy, or GOGC from the environment).", func() float64 {
		return float64(gcpolicy.Read().Percent)
	})
	reg.Gauge("keel_agent_go_memory_limit_bytes", "Effective Go memory limit of the agent (GOMEMLIMIT; 9223372036854775807 = none).", func() float64 {
		return float64(gcpolicy.Read().MemoryLimit)
	})
	reg.Gauge("keel_agent_go_gc_policy_adaptive", "1 when agent/gcpolicy adapts GOGC, 0 when GOGC came from the environment.", func() float64 {
		if gcPolicy == nil {
			return 0
		}
		return 1
	})
	reg.Gauge("keel_agent_go_gc_headroom_bytes", "Garbage the GC policy lets the heap gather beyond its live part (0 when GOGC came from the environment).", func() float64 {
		if gcPolicy == nil {
			return 0
		}
		return float64(gcPolicy.Headroom())
	})
	reg.Gauge("keel_agent_go_heap_live_bytes", "Go heap found live by the last GC.", func() float64 {
		return float64(gcpolicy.Read().LiveHeap)
	})
	reg.Gauge("keel_agent_go_gc_cycles_total", "Completed GC cycles of the agent.", func() float64 {
		return float64(gcpolicy.Read().Cycles)
	})
}
