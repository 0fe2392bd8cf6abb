// Package gcpolicy sets the agent's garbage-collector policy.
//
// Container stdout read over ReadStdout makes garbage in proportion to the
// bytes moved (each 32 KiB read allocates its reply), while the agent's
// live heap is small (~4 MB): with Go's default GOGC=100 the collector runs
// every few MiB of output. Measured with the keel-agent binary
// (tests/bench/containerbench BenchmarkAgentStdoutRPC32KiB, load 12-14 on
// 2 cores), the agent's CPU per MB of 32 KiB ReadStdout is 12.5 ms at
// GOGC=100, 8.9-9.1 ms at 200 and 8.8-13 ms at 400, for an RssAnon after
// 64 MiB streamed of 7.5, 11.5-13 and 19.5-23 MiB: 200 buys the gain, 400
// only costs memory. So the policy is GOGC=200, bounded: after every GC
// cycle the percent is set so that the next heap goal, live*(1+percent/100),
// exceeds the live heap by at most a headroom (1/16 of the guest's memory,
// 8 to 32 MiB), never below Go's default of 100. A heap that has grown (many
// containers) thus falls back to the default instead of growing its
// garbage with it: memory stays bounded in a 128 MiB guest.
//
// An explicit GOGC in the environment (the kernel passes unknown command
// line words such as GOGC=400 into init's environment) disables the policy:
// the runtime already applied it. GOMEMLIMIT is left to the runtime, which
// honours it whether or not the policy runs.
//
// Only the agent's main applies the policy: the container inits libcontainer
// re-executes from the same binary are dispatched in an init func, before
// main, and keep the runtime's defaults.
package gcpolicy

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

const (
	// MinPercent is Go's default GOGC: the policy never collects more often.
	MinPercent = 100
	// MaxPercent is GOGC for a small heap: the knee of the measurements
	// in the package doc (400 gained no CPU and cost 8-10 MiB more).
	MaxPercent = 200
	// step quantises the percent so that a live heap wobbling by a few
	// bytes does not reset the GC controller every cycle.
	step = 25

	// minHeadroom and maxHeadroom clamp the headroom, MemTotal/16.
	minHeadroom = 8 << 20
	maxHeadroom = 32 << 20
)

// Headroom is how many bytes of garbage the policy lets the heap gather
// beyond its live part in a guest with memTotal bytes of memory: 1/16 of
// it, at least 8 MiB and at most 32 MiB.
func Headroom(memTotal uint64) uint64 {
	return min(max(memTotal/16, minHeadroom), maxHeadroom)
}

// PercentFor is the GOGC that keeps the next heap goal within headroom of
// a live heap (with stacks and globals) of live bytes, clamped to [MinPercent, MaxPercent] and
// rounded down to a multiple of 25.
func PercentFor(live, headroom uint64) int {
	if live == 0 {
		return MaxPercent
	}
	p := headroom * 100 / live
	if p >= MaxPercent {
		return MaxPercent
	}
	return max(int(p)/step*step, MinPercent)
}

// Policy is the running adaptive policy.
type Policy struct {
	headroom uint64

	mu      sync.Mutex
	percent int
	stopped bool
}

// Start applies the policy unless getenv reports GOGC set (then it returns
// nil and changes nothing). memTotal is the guest's memory (MemTotal of
// /proc/meminfo); 0 means unknown and takes the smallest headroom.
func Start(getenv func(string) (string, bool), memTotal uint64) *Policy {
	if _, ok := getenv("GOGC"); ok {
		return nil
	}
	p := &Policy{headroom: Headroom(memTotal)}
	p.adjust()
	p.arm()
	return p
}

// Headroom returns the policy's headroom in bytes.
func (p *Policy) Headroom() uint64 { return p.headroom }

// tick is a heap object whose finalizer runs once after the GC cycle that
// found it unreachable; it re-arms a new one. It holds a pointer so that it
// is never a tiny allocation (whose finalizer may never run).
type tick struct{ p *Policy }

func (p *Policy) arm() {
	runtime.SetFinalizer(&tick{p}, func(t *tick) {
		if t.p.adjust() {
			t.p.arm()
		}
	})
}

// Stop ends the adjustments (the percent stays as last set).
func (p *Policy) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped = true
}

// adjust sets the percent for the live heap of the last GC cycle; false
// once stopped. The runtime applies GOGC to the live heap plus the stacks
// and globals it scanned (the heap goal is live + (live + stacks +
// globals) * GOGC/100), so these count in the base too.
func (p *Policy) adjust() bool {
	want := PercentFor(readUint(liveHeap)+readUint(scanStack)+readUint(scanGlobals), p.headroom)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return false
	}
	if want != p.percent {
		debug.SetGCPercent(want)
		p.percent = want
	}
	return true
}

const (
	liveHeap    = "/gc/heap/live:bytes"
	scanStack   = "/gc/scan/stack:bytes"
	scanGlobals = "/gc/scan/globals:bytes"
	gogc        = "/gc/gogc:percent"
	memLimit    = "/gc/gomemlimit:bytes"
	heapGoal    = "/gc/heap/goal:bytes"
	gcCycles    = "/gc/cycles/total:gc-cycles"
)

// Effective is what the runtime uses now, read back from runtime/metrics
// (whoever set it: this policy, GOGC, GOMEMLIMIT or the defaults).
type Effective struct {
	Percent     int    // GOGC; -1 = off
	MemoryLimit uint64 // GOMEMLIMIT; math.MaxInt64 = none
	HeapGoal    uint64 // the heap size at which the next GC starts
	LiveHeap    uint64 // the heap the last GC found live
	Cycles      uint64 // completed GC cycles
}

// Read returns the runtime's effective GC settings.
func Read() Effective {
	s := []metrics.Sample{{Name: gogc}, {Name: memLimit}, {Name: heapGoal}, {Name: liveHeap}, {Name: gcCycles}}
	metrics.Read(s)
	v := func(i int) uint64 {
		if s[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return s[i].Value.Uint64()
	}
	return Effective{Percent: int(v(0)), MemoryLimit: v(1), HeapGoal: v(2), LiveHeap: v(3), Cycles: v(4)}
}

func readUint(name string) uint64 {
	s := []metrics.Sample{{Name: name}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
