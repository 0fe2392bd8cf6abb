package containerbench

import (
	"flag"
	"os"
	"runtime"
	"testing"

	"github.com/keelvm/keel/agent/container/containertest"
	"github.com/keelvm/keel/init/reaper"
	"github.com/opencontainers/runc/libcontainer"
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
)

// The test binary is libcontainer's init too, like keel-agent.
func init() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init()
	}
	// As in cmd/keel-agent: keep goroutines that setns off the main thread.
	runtime.LockOSThread()
}

var (
	scaleN = flag.Int("scale-n", 200, "live containers in BenchmarkCreate200")
	rootfs string
)

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Geteuid() != 0 {
		os.Exit(containertest.RunWithoutRoot(m))
	}
	dir, err := os.MkdirTemp("", "keel-bench-rootfs-")
	if err != nil {
		panic(err)
	}
	if err := containertest.MakeRootfs(dir); err != nil {
		os.RemoveAll(dir)
		panic(err)
	}
	rootfs = dir
	// The main goroutine reaps orphans (init/reaper); tests run beside it.
	code := 0
	if err := reaper.RunMain(func() { code = m.Run() }); err != nil {
		panic(err)
	}
	os.RemoveAll(dir)
	removeCgroupParents()
	os.Exit(code)
}

// TestNeedsRoot reports, as a skip with its reason, that this package's
// tests did not run without root (see containertest.RunWithoutRoot).
func TestNeedsRoot(t *testing.T) { containertest.SkipUnlessRoot(t, "container benchmarks") }
