package containers_test

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/keelvm/keel/agent/container/containertest"
	"github.com/keelvm/keel/agent/containers"
	"github.com/keelvm/keel/agent/service"
	"github.com/keelvm/keel/init/reaper"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/opencontainers/runc/libcontainer"
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
)

func init() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init()
	}
	runtime.LockOSThread()
}

// The handlers slot into service.Service the way the lead wires them: one
// level deep, over Unimplemented two levels deep.
type fallback struct{ service.Unimplemented }
type assembled struct {
	fallback
	*containers.RPC
}

var _ pb.AgentServiceService = assembled{}

var rootfs string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		os.Exit(containertest.RunWithoutRoot(m))
	}
	// Mount leak checks must not count other packages' mounts.
	containertest.InPrivateMountNamespace()
	dir, err := os.MkdirTemp("", "keel-rpc-rootfs-")
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
	// The per-process cgroup parents (empty unless a test leaked).
	parents, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", cgParent))
	for _, p := range append(parents, filepath.Join("/sys/fs/cgroup", cgParent)) {
		_ = os.Remove(p)
	}
	os.Exit(code)
}

// TestNeedsRoot reports, as a skip with its reason, that this package's
// tests did not run without root (see containertest.RunWithoutRoot).
func TestNeedsRoot(t *testing.T) { containertest.SkipUnlessRoot(t, "container tests") }
