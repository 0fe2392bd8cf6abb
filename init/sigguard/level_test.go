package sigguard

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// levelHandler passes each record's level and message to a channel.
type levelHandler struct{ ch chan slog.Record }

func (h levelHandler) Enabled(context.Context, slog.Level) bool      { return true }
func (h levelHandler) Handle(_ context.Context, r slog.Record) error { h.ch <- r; return nil }
func (h levelHandler) WithAttrs([]slog.Attr) slog.Handler            { return h }
func (h levelHandler) WithGroup(string) slog.Handler                 { return h }

// TestSigpipeAloneLoggedAtDebug: SIGPIPE alone (which the agent's own
// splice into a closed socket raises) is caught and logged at debug level;
// any other held signal is a warning.
func TestSigpipeAloneLoggedAtDebug(t *testing.T) {
	ch := make(chan slog.Record, 8)
	prev := slog.Default()
	slog.SetDefault(slog.New(levelHandler{ch}))
	defer slog.SetDefault(prev)
	stop := HoldSignals(unix.SIGPIPE, unix.SIGUSR1)
	defer stop()
	next := func() slog.Record {
		t.Helper()
		select {
		case r := <-ch:
			return r
		case <-time.After(10 * time.Second):
			t.Fatal("no log record for a held signal")
		}
		return slog.Record{}
	}
	unix.Kill(unix.Getpid(), unix.SIGPIPE)
	if r := next(); r.Level != slog.LevelDebug {
		t.Errorf("SIGPIPE alone logged at %v, want DEBUG", r.Level)
	}
	unix.Kill(unix.Getpid(), unix.SIGUSR1)
	if r := next(); r.Level != slog.LevelWarn {
		t.Errorf("SIGUSR1 logged at %v, want WARN", r.Level)
	}
}
