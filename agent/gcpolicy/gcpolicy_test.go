package gcpolicy

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestHeadroom(t *testing.T) {
	for _, c := range []struct{ mem, want uint64 }{
		{0, 8 << 20},
		{128 << 20, 8 << 20},
		{256 << 20, 16 << 20},
		{2 << 30, 32 << 20},
	} {
		if got := Headroom(c.mem); got != c.want {
			t.Errorf("Headroom(%d MiB) = %d MiB, want %d MiB", c.mem>>20, got>>20, c.want>>20)
		}
	}
}

func TestPercentFor(t *testing.T) {
	for _, c := range []struct {
		live, headroom uint64
		want           int
	}{
		{0, 8 << 20, 200},
		{4 << 20, 32 << 20, 200},
		{4 << 20, 8 << 20, 200},
		{6 << 20, 8 << 20, 125}, // 133 rounded down
		{7 << 20, 8 << 20, 100}, // 114 rounded down
		{16 << 20, 8 << 20, 100},
		{1 << 30, 8 << 20, 100},
	} {
		if got := PercentFor(c.live, c.headroom); got != c.want {
			t.Errorf("PercentFor(%d, %d) = %d, want %d", c.live, c.headroom, got, c.want)
		}
	}
}

// restoreGC puts the test binary's GC percent back after a test that ran
// the policy, and stops the policy's ticks from mattering to later tests.
func restoreGC(t *testing.T) {
	old := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(old) })
}

func TestExplicitGOGCWins(t *testing.T) {
	restoreGC(t)
	debug.SetGCPercent(150) // what GOGC=150 made the runtime start with
	p := Start(func(k string) (string, bool) {
		if k == "GOGC" {
			return "150", true
		}
		return "", false
	}, 2<<30)
	if p != nil {
		t.Fatal("Start with GOGC set returned a running policy")
	}
	runtime.GC()
	if got := Read().Percent; got != 150 {
		t.Fatalf("effective GOGC %d after Start with GOGC=150, want 150", got)
	}
}

// TestPolicyFollowsLiveHeap runs the policy in this process: with a large
// headroom the small test heap gets MaxPercent; once a live heap larger
// than the headroom is held, the next GC cycles bring it down to
// MinPercent, read back from the runtime.
func TestPolicyFollowsLiveHeap(t *testing.T) {
	restoreGC(t)
	p := Start(func(string) (string, bool) { return "", false }, 0) // 8 MiB headroom
	if p == nil || p.Headroom() != 8<<20 {
		t.Fatalf("Start = %v, want a policy with 8 MiB headroom", p)
	}
	defer p.Stop()
	runtime.GC()
	waitPercent(t, func(pct int) bool { return pct > MinPercent }, "above 100 with a small heap")
	// The point of the headroom: the next GC starts before the garbage
	// exceeds it (goal - live - stacks - globals <= headroom).
	if e := Read(); e.HeapGoal > e.LiveHeap+readUint(scanStack)+readUint(scanGlobals)+p.Headroom() {
		t.Fatalf("heap goal %d with live heap %d at GOGC %d: more than the %d headroom of garbage", e.HeapGoal, e.LiveHeap, e.Percent, p.Headroom())
	}
	hold := make([][]byte, 0, 64)
	for range 64 {
		hold = append(hold, make([]byte, 256<<10)) // 16 MiB live, twice the headroom
	}
	waitPercent(t, func(pct int) bool { return pct == MinPercent }, "100 with a 16 MiB live heap")
	runtime.KeepAlive(hold)
	hold = nil
	waitPercent(t, func(pct int) bool { return pct > MinPercent }, "back above 100 once the heap is freed")
}

// waitPercent runs GC cycles (the policy adjusts from a finalizer, on the
// finalizer goroutine, after each) until ok holds for the effective GOGC.
func waitPercent(t *testing.T, ok func(int) bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		pct := Read().Percent
		if ok(pct) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("effective GOGC %d, want %s", pct, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestReadReportsMemoryLimit(t *testing.T) {
	old := debug.SetMemoryLimit(48 << 20)
	defer debug.SetMemoryLimit(old)
	e := Read()
	if e.MemoryLimit != 48<<20 {
		t.Fatalf("MemoryLimit = %d, want %d", e.MemoryLimit, 48<<20)
	}
	if e.HeapGoal == 0 {
		t.Fatalf("Read = %+v: no heap goal", e)
	}
}
