package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/container/containertest"
	"github.com/keelvm/keel/tests/keelctltest"
)

// TestProcessCommandsHostMode runs keelctl run/exec/kill/stats/rm, with
// pipes and with a terminal, against the real agent in host mode on a
// Unix socket, with a busybox rootfs.
func TestProcessCommandsHostMode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("containers need root")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("busybox-static is not installed")
	}
	dir := t.TempDir()
	agentBin, err := containertest.AgentBinary(dir)
	if err != nil {
		t.Fatal(err)
	}
	bin := keelctltest.Binary(t, dir)
	rootfs := filepath.Join(dir, "rootfs")
	if err := containertest.MakeRootfs(rootfs); err != nil {
		t.Fatal(err)
	}
	agent := containertest.StartAgent(t, containertest.AgentOptions{Bin: agentBin})
	keelctltest.Check(t, bin, agent.Addr, rootfs, 60*time.Second)

	t.Run("logs-needs-vsock", func(t *testing.T) {
		r := keelctltest.Run(t, bin, agent.Addr, "", 10*time.Second, "logs")
		if r.Code != 2 || !strings.Contains(r.Stderr, "vsock") {
			t.Errorf("logs on a unix address: exit %d stderr %q", r.Code, r.Stderr)
		}
	})
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]int{"9": 9, "KILL": 9, "sigkill": 9, "SIGTERM": 15, "hup": 1, "64": 64} {
		if got, err := parseSignal(in); err != nil || int(got) != want {
			t.Errorf("parseSignal(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"0", "65", "-1", "NOPE", "", "SIG"} {
		if _, err := parseSignal(bad); err == nil {
			t.Errorf("parseSignal(%q) accepted", bad)
		}
	}
}
