//go:build !race

// The race detector makes sync.Pool drop items at random, so allocation
// counts are only meaningful without it.

package streamread

import "testing"

// Taking a buffer from the pool and putting it back allocates nothing in
// the steady state (Put used to allocate a slice header per call).
func TestBuffersPutDoesNotAllocate(t *testing.T) {
	b := &buffers{}
	b.Put(b.Get(32 << 10))
	if n := testing.AllocsPerRun(1000, func() { b.Put(b.Get(32 << 10)) }); n != 0 {
		t.Fatalf("Get+Put allocates %v times per call, want 0", n)
	}
}
