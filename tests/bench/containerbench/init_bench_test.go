package containerbench

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keelvm/keel/init/reaper"
)

// Every container process starts as the agent binary re-executed as
// `keel-agent init`: the Go runtime and every package's initialisation run
// before libcontainer's init gets control. These two benchmarks start a
// binary as `BIN init` with no libcontainer environment, so each run ends
// right where libcontainer.Init reads its first variable (and fails): the
// keel-agent binary vs a static binary holding libcontainer only, built
// with the agent's tags and link flags.

// sliminitBinary builds testdata/sliminit like `make agent` builds the agent.
func sliminitBinary(tb testing.TB) string {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "sliminit")
	cmd := exec.Command("go", "build", "-trimpath", "-tags", "netgo,osusergo,seccomp",
		"-ldflags", "-s -w -linkmode external -extldflags -static", "-o", bin, "./testdata/sliminit")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("unable to build sliminit: %v: %s", err, out)
	}
	return bin
}

// startInit runs `bin init` to its end and checks it got as far as
// libcontainer.Init (which fails without its environment).
func startInit(bin string) error {
	var out bytes.Buffer
	cmd := exec.Command(bin, "init")
	cmd.Env = []string{}
	cmd.Stdout, cmd.Stderr = &out, &out
	st, err := reaper.Command(cmd)
	if err != nil {
		return err
	}
	if st.Code == 0 || !strings.Contains(out.String(), "_LIBCONTAINER_") {
		return fmt.Errorf("%s init: %v, %q: did not reach libcontainer.Init", bin, st, out.String())
	}
	return nil
}

func benchInitStart(b *testing.B, bin string) {
	if err := reaper.Start(); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := startInit(bin); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAgentInitStart: exec of the keel-agent binary as a container
// init, up to libcontainer.Init.
func BenchmarkAgentInitStart(b *testing.B) { benchInitStart(b, agentBinary(b)) }

// BenchmarkSlimInitStart: the same for a libcontainer-only static binary.
func BenchmarkSlimInitStart(b *testing.B) { benchInitStart(b, sliminitBinary(b)) }
