package container

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/runc/libcontainer"
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The test binary is libcontainer's init too, like keel-agent.
func init() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init()
	}
}

var (
	long       = flag.Bool("long", false, "run the long leak test (2000 exec cycles)")
	testRootfs string
)

var applets = []string{"sh", "echo", "cat", "sleep", "hostname", "true", "false", "ls", "grep", "mount", "ps", "kill", "id", "env", "wc", "head", "dd", "yes", "date", "test", "pwd"}

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Println("skipping: container tests need root")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "keel-rootfs-")
	if err != nil {
		panic(err)
	}
	if err := makeRootfs(dir); err != nil {
		os.RemoveAll(dir)
		panic(err)
	}
	testRootfs = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// makeRootfs builds a minimal busybox-static tree.
func makeRootfs(dir string) error {
	for _, d := range []string{"bin", "proc", "sys", "dev", "etc", "tmp", "root"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	b, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("busybox-static is needed: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin/busybox"), b, 0o755); err != nil {
		return err
	}
	for _, a := range applets {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", a)); err != nil {
			return err
		}
	}
	for name, content := range map[string]string{"etc/hostname": "rootfs\n", "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n", "etc/group": "root:x:0:\n", "etc/resolv.conf": ""} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// testSpec is runc's example spec on the busybox rootfs, running args.
func testSpec(args ...string) *specs.Spec {
	s := specconv.Example()
	s.Root.Path = testRootfs
	s.Root.Readonly = true
	s.Process.Terminal = false
	s.Process.Args = args
	s.Hostname = "keeltest"
	s.Mounts = append(s.Mounts, specs.Mount{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "size=1m"}})
	return s
}
