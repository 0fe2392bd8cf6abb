package vmbench

import (
	"bytes"
	"os/exec"
	"strconv"
	"strings"
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

// TestTrivialInitImportsKeel checks that BenchmarkP6BootSplit's "imports"
// arm still links what keel-agent's main imports (Keel's and
// libcontainer's packages), so the arm measures keel-agent's package
// initialisation and not an older subset of it.
func TestTrivialInitImportsKeel(t *testing.T) {
	imports := func(dir, tags string) map[string]bool {
		out, err := exec.Command("go", "list", "-tags", tags, "-f", `{{join .Imports "\n"}}`, dir).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", dir, err)
		}
		m := map[string]bool{}
		for _, p := range strings.Fields(string(out)) {
			m[p] = true
		}
		return m
	}
	keel := imports("../../../cmd/keel-agent", "netgo,osusergo,seccomp")
	trivial := imports("./testdata/trivialinit", "netgo,osusergo,seccomp,keelimports")
	n := 0
	for p := range keel {
		if !strings.HasPrefix(p, "github.com/keelvm/keel/") && !strings.HasPrefix(p, "github.com/opencontainers/") {
			continue
		}
		n++
		if !trivial[p] {
			t.Errorf("keel-agent imports %s; testdata/trivialinit/keelimports.go does not", p)
		}
	}
	if n < 10 {
		t.Errorf("only %d of keel-agent's imports are Keel's or libcontainer's: the filter is wrong", n)
	}
	if !trivial["runtime/cgo"] {
		t.Error("the imports arm is not linked with cgo like keel-agent")
	}
}
