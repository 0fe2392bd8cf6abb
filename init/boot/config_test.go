package boot

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keelvm/keel/init/step"
)

func TestReadConfigWithFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "agent.toml")
	os.WriteFile(f, []byte("log_level = \"debug\"\nhotplug_timeout = 7\nserver_addr = \"vsock://-1:2000\"\nnope = 1\n"), 0o644)
	line := "agent.config_file=" + f + " agent.server_addr=vsock://-1:3000"
	cfg, warns, _ := readConfig(&line, slog.New(slog.DiscardHandler))
	if cfg.LogLevel != slog.LevelDebug || cfg.HotplugTimeout != 7*time.Second || cfg.ServerAddr != "vsock://-1:3000" {
		t.Errorf("config %+v", cfg)
	}
	if len(warns) != 1 || warns[0].Key != "nope" {
		t.Errorf("warnings %v", warns)
	}
	missing := "agent.config_file=/nonexistent agent.log=warn"
	cfg, _, _ = readConfig(&missing, slog.New(slog.DiscardHandler))
	if cfg.LogLevel != slog.LevelWarn {
		t.Errorf("a missing config file must not lose the command line: %+v", cfg)
	}
}

// TestRCUSteps: expedited RCU is switched on unless the kernel command line
// chose either way.
func TestRCUSteps(t *testing.T) {
	s := rcuSteps("console=ttyS0 quiet agent.log=debug xrcupdate.rcu_normal=1")
	if len(s) != 1 {
		t.Fatalf("steps %v, want one", s)
	}
	w, ok := s[0].(step.Write)
	if !ok || w.Path != RCUExpeditedPath || w.Data != "1" || !w.Opt {
		t.Errorf("step %#v, want an optional write of 1 to %s", s[0], RCUExpeditedPath)
	}
	for _, line := range []string{"quiet rcupdate.rcu_expedited=0", "rcupdate.rcu_normal=1 quiet", "rcupdate.rcu_expedited"} {
		if s := rcuSteps(line); len(s) != 0 {
			t.Errorf("%q: steps %v, want none (the command line chose)", line, s)
		}
	}
}
