package container

import (
	"flag"
	"github.com/keelvm/keel/agent/container/containertest"
	"github.com/keelvm/keel/init/reaper"
	"os"
	"runtime"
	"testing"

	"github.com/opencontainers/runc/libcontainer"
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The test binary is libcontainer's init too, like keel-agent.
func init() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init()
	}
	// As in cmd/keel-agent: keep goroutines that setns (libcontainer's
	// mount-source thread) off the main thread, which Go never kills.
	runtime.LockOSThread()
}

var (
	long       = flag.Bool("long", false, "run the long leak test (2000 exec cycles)")
	testRootfs string
)

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Geteuid() != 0 {
		os.Exit(containertest.RunWithoutRoot(m))
	}
	// Mount leak checks must not count other packages' mounts.
	containertest.InPrivateMountNamespace()
	dir, err := os.MkdirTemp("", "keel-rootfs-")
	if err != nil {
		panic(err)
	}
	if err := containertest.MakeRootfs(dir); err != nil {
		os.RemoveAll(dir)
		panic(err)
	}
	testRootfs = dir
	// The main goroutine reaps orphans (init/reaper); tests run beside it.
	code := 0
	if err := reaper.RunMain(func() { code = m.Run() }); err != nil {
		panic(err)
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// testSpec is runc's example spec on the busybox rootfs, running args.
func testSpec(args ...string) *specs.Spec { return containertest.Spec(testRootfs, args...) }

// TestNeedsRoot reports, as a skip with its reason, that this package's
// tests did not run without root (see containertest.RunWithoutRoot).
func TestNeedsRoot(t *testing.T) { containertest.SkipUnlessRoot(t, "container tests") }
