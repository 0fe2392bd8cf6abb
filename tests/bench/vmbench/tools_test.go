package vmbench

import (
	"bytes"
	"os/exec"
	"strconv"
	"testing"

	"github.com/keelvm/keel/agent/metrics"
	"github.com/keelvm/keel/rootfs-builder/recipe"
)

// TestToolsAreStaticInits checks, without a VM, what the benchmarks put
// into guest images: both testdata programs build as static binaries the
// minimal recipe accepts as /sbin/init, and vsockstream's stdout is
// exactly -bytes bytes of the pattern patternCheck expects.
func TestToolsAreStaticInits(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"trivialinit", "vsockstream"} {
		if err := recipe.CheckStaticBinary(buildStatic(t, dir, name)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	const n = 1<<20 + 12345
	var out bytes.Buffer
	cmd := exec.Command(dir+"/vsockstream", "-bytes", strconv.Itoa(n), "-chunk", "4099")
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	var check patternCheck
	if _, err := check.Write(out.Bytes()); err != nil {
		t.Fatal(err)
	}
	if check.n != n {
		t.Errorf("vsockstream wrote %d bytes, want %d", check.n, n)
	}
	// The checker does catch a wrong byte.
	bad := append([]byte(nil), out.Bytes()[:1000]...)
	bad[777]++
	if _, err := new(patternCheck).Write(bad); err == nil {
		t.Error("patternCheck accepted a corrupted byte")
	}
}

// TestParseMemory reads the memory figures out of the agent's real
// GetMetrics text (metrics.Registry.Render on this host).
func TestParseMemory(t *testing.T) {
	m, err := parseMemory(metrics.New().Render())
	if err != nil {
		t.Fatal(err)
	}
	if m.Used <= 0 || m.Used >= m.Total || m.AgentAnon <= 0 {
		t.Errorf("implausible %+v", m)
	}
	if _, err := parseMemory("keel_agent_anon_memory_bytes 5\n"); err == nil {
		t.Error("text without meminfo parsed")
	}
}
