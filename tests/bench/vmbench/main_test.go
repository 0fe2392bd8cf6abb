package vmbench

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// shared holds what several benchmarks reuse: a scratch directory for
// images and binaries, removed when the test binary ends.
var shared struct {
	mu  sync.Mutex
	dir string
}

// sharedDir is the process-wide scratch directory (created on first use).
func sharedDir(tb testing.TB) string {
	tb.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.dir == "" {
		d, err := os.MkdirTemp("", "keel-vmbench-")
		if err != nil {
			tb.Fatal(err)
		}
		shared.dir = d
	}
	return shared.dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	closeStreamGuest()
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// loadAverage is the host's 1-minute load average, reported beside each
// figure: on a shared 2-core machine it explains most of the spread.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}
