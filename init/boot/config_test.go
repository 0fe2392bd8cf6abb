package boot

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestReadConfigWithFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "agent.toml")
	os.WriteFile(f, []byte("log_level = \"debug\"\nhotplug_timeout = 7\nserver_addr = \"vsock://-1:2000\"\nnope = 1\n"), 0o644)
	line := "agent.config_file=" + f + " agent.server_addr=vsock://-1:3000"
	cfg, warns := readConfig(&line, slog.New(slog.DiscardHandler))
	if cfg.LogLevel != slog.LevelDebug || cfg.HotplugTimeout != 7*time.Second || cfg.ServerAddr != "vsock://-1:3000" {
		t.Errorf("config %+v", cfg)
	}
	if len(warns) != 1 || warns[0].Key != "nope" {
		t.Errorf("warnings %v", warns)
	}
	missing := "agent.config_file=/nonexistent agent.log=warn"
	cfg, _ = readConfig(&missing, slog.New(slog.DiscardHandler))
	if cfg.LogLevel != slog.LevelWarn {
		t.Errorf("a missing config file must not lose the command line: %+v", cfg)
	}
}
