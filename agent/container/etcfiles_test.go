package container

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/keelvm/keel/agent/container/containertest"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// CreateSandbox's DNS, hosts and hostname reach a container whose rootfs
// has those files (read-only bind mounts of the sandbox's copies); a spec
// mounting the path itself keeps its own; a rootfs without /etc/hosts gets
// no mount (and still starts); Destroy removes the files.
func TestSandboxEtcFiles(t *testing.T) {
	s := newSandbox(t)
	if err := s.Create(SandboxConfig{ID: "sbetc", Hostname: "podhost", DNS: []string{" nameserver 10.0.0.53 ", "search example.test"}}); err != nil {
		t.Fatal(err)
	}
	withHosts := filepath.Join(t.TempDir(), "rootfs")
	if err := containertest.MakeRootfs(withHosts); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(withHosts, "etc/hosts"), []byte("# image's own\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(spec *specs.Spec) string {
		t.Helper()
		spec.Hostname = ""
		io := newIO(t, false)
		c, err := s.CreateContainer(ContainerConfig{ID: uniqueID("etc"), Spec: spec, IO: io})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		out := readAll(t, io)
		waitStatus(t, c.InitProcess())
		return out
	}
	script := "cat /etc/resolv.conf /etc/hosts /etc/hostname; echo x > /etc/hosts && echo writable"
	out := run(containertest.Spec(withHosts, "/bin/sh", "-c", script))
	want := "nameserver 10.0.0.53\nsearch example.test\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tpodhost\npodhost\n"
	if out != want {
		t.Errorf("container sees %q, want %q (and /etc/hosts read-only)", out, want)
	}
	own := containertest.Spec(withHosts, "/bin/cat", "/etc/hosts")
	own.Mounts = append(own.Mounts, specs.Mount{Destination: "/etc/hosts", Type: "bind", Source: filepath.Join(withHosts, "etc/hosts"), Options: []string{"rbind", "ro"}})
	if out := run(own); out != "# image's own\n" {
		t.Errorf("spec's own /etc/hosts mount: %q", out)
	}
	if out := run(testSpec("/bin/sh", "-c", "test -e /etc/hosts || echo no-hosts")); out != "no-hosts\n" {
		t.Errorf("rootfs without /etc/hosts: %q", out)
	}
	dir := filepath.Join(s.cfg.StateRoot, "sandbox")
	if err := s.Destroy(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"resolv.conf", "hosts", "hostname"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !os.IsNotExist(err) {
			t.Errorf("%s left after Destroy: %v", f, err)
		}
	}
}
