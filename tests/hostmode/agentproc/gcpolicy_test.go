package agentproc

import (
	"testing"

	"github.com/keelvm/keel/tests/promtext"
)

// TestGCPolicy reads the agent's effective GC settings back over
// GetMetrics (keelctl metrics): without GOGC the adaptive policy of
// agent/gcpolicy runs (GOGC above Go's default, at most 200); an explicit
// GOGC in the agent's environment wins and turns it off; GOMEMLIMIT is the
// runtime's memory limit either way.
func TestGCPolicy(t *testing.T) {
	const limit = 48 << 20
	for _, c := range []struct {
		name     string
		env      []string
		adaptive bool
		percent  float64 // the policy's choice, in (100, 200], when adaptive; -1 = off
		limit    float64 // 0: none
	}{
		{"default", []string{"env", "-u", "GOGC", "-u", "GOMEMLIMIT"}, true, 0, 0},
		{"GOGC=150", []string{"env", "-u", "GOMEMLIMIT", "GOGC=150"}, false, 150, 0},
		{"GOGC=off", []string{"env", "-u", "GOMEMLIMIT", "GOGC=off"}, false, -1, 0},
		{"GOMEMLIMIT=48MiB", []string{"env", "-u", "GOGC", "GOMEMLIMIT=48MiB"}, true, 0, limit},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := startAgentVia(t, c.env...)
			out, _, code := keelctl(t, "--addr", a.Addr, "metrics")
			if code != 0 {
				t.Fatalf("keelctl metrics: exit %d", code)
			}
			get := func(name string) float64 {
				v, ok := promtext.Value(out, name)
				if !ok {
					t.Fatalf("metrics lack %s:\n%s", name, out)
				}
				return v
			}
			pct, adaptive, headroom := get("keel_agent_go_gc_percent"), get("keel_agent_go_gc_policy_adaptive"), get("keel_agent_go_gc_headroom_bytes")
			t.Logf("GOGC %v adaptive %v headroom %v live %v cycles %v limit %v", pct, adaptive, headroom,
				get("keel_agent_go_heap_live_bytes"), get("keel_agent_go_gc_cycles_total"), get("keel_agent_go_memory_limit_bytes"))
			if (adaptive == 1) != c.adaptive {
				t.Fatalf("keel_agent_go_gc_policy_adaptive %v, want adaptive=%v", adaptive, c.adaptive)
			}
			switch {
			case c.adaptive:
				if pct <= 100 || pct > 200 || headroom <= 0 {
					t.Fatalf("adaptive policy: GOGC %v headroom %v, want GOGC in (100, 200] for the agent's small heap", pct, headroom)
				}
			case pct != c.percent:
				t.Fatalf("GOGC %v, want %v from the environment", pct, c.percent)
			}
			wantLimit := c.limit
			if wantLimit == 0 {
				wantLimit = 1<<63 - 1 // math.MaxInt64: no limit
			}
			if got := get("keel_agent_go_memory_limit_bytes"); got != wantLimit {
				t.Fatalf("memory limit %v, want %v", got, wantLimit)
			}
			alive(t, a)
		})
	}
}
