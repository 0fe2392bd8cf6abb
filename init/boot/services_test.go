package boot

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/init/cmdline"
	"github.com/keelvm/keel/init/console"
	"github.com/keelvm/keel/init/reaper"
)

// unixListen stands in for vsock: port N listens on dir/N.sock.
func unixListen(dir string, refuse uint32) console.Listen {
	return func(port uint32) (net.Listener, error) {
		if port == refuse {
			return nil, fmt.Errorf("port %d: address in use", port)
		}
		return net.Listen("unix", filepath.Join(dir, fmt.Sprintf("%d.sock", port)))
	}
}

// readRecord reads one JSON log record from r and returns its msg.
func readRecord(t *testing.T, r *bufio.Reader) map[string]any {
	t.Helper()
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("log stream: %v after %q", err, line)
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(line), &rec); err != nil {
		t.Fatalf("log stream line %q: %v", line, err)
	}
	return rec
}

// TestEarlyListenersServe: the log and debug-console ports Start opens
// before the agent's own listener are listening when startServices
// returns (no wait: the agent listens right after, and a host that saw
// Health answer connects to them at once). The log port replays the lines
// logged so far, its own listening line included, then streams new ones;
// the debug console runs a shell on the connection. A port that cannot be
// opened is logged and the other still served; the context's end closes
// both.
func TestEarlyListenersServe(t *testing.T) {
	if err := reaper.Start(); err != nil {
		t.Fatal(err)
	}
	if console.FindShell() == "" {
		t.Skipf("no shell in %v for the debug console", console.Shells)
	}
	dir := t.TempDir()
	res := &Result{Config: cmdline.Default(), LogStream: console.NewStream()}
	res.Config.LogVPort, res.Config.DebugConsoleVPort = 1025, 1026
	res.Logger, res.Level = console.NewLogger(slog.LevelInfo, io.Discard, res.LogStream)
	res.Logger.Info("before the ports", "step", "mkdir -p /run")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startServices(ctx, res, unixListen(dir, 0))
	if len(res.Closers) != 2 {
		t.Fatalf("%d listeners, want 2", len(res.Closers))
	}

	lc, err := net.Dial("unix", filepath.Join(dir, "1025.sock"))
	if err != nil {
		t.Fatalf("log port not listening once startServices returned: %v", err)
	}
	defer lc.Close()
	lc.SetDeadline(time.Now().Add(15 * time.Second))
	lr := bufio.NewReader(lc)
	var msgs []string
	for len(msgs) < 3 {
		msgs = append(msgs, fmt.Sprint(readRecord(t, lr)["msg"]))
	}
	want := []string{"before the ports", "log stream listening", "debug console listening"}
	for i, w := range want {
		if !strings.HasPrefix(msgs[i], w) {
			t.Fatalf("log stream replayed %q, want lines starting %q", msgs, want)
		}
	}
	res.Logger.Warn("after connecting", "n", 7)
	if rec := readRecord(t, lr); rec["msg"] != "after connecting" || rec["n"] != float64(7) {
		t.Fatalf("live log line %v", rec)
	}

	dc, err := net.Dial("unix", filepath.Join(dir, "1026.sock"))
	if err != nil {
		t.Fatalf("debug console not listening once startServices returned: %v", err)
	}
	defer dc.Close()
	dc.SetDeadline(time.Now().Add(15 * time.Second))
	fmt.Fprintf(dc, "echo console-$((6*7))\nexit 3\n")
	out, _ := io.ReadAll(dc)
	if !strings.Contains(string(out), "console-42") {
		t.Fatalf("debug console output %q, want the shell's console-42", out)
	}
	if rec := readRecord(t, lr); rec["msg"] != "debug console session ended" || !strings.Contains(fmt.Sprint(rec["status"]), "3") {
		t.Fatalf("after the session: log line %v, want the session's end with exit status 3", rec)
	}

	cancel()
	for _, port := range []string{"1025", "1026"} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			c, err := net.Dial("unix", filepath.Join(dir, port+".sock"))
			if err != nil {
				break
			}
			c.Close()
			if time.Now().After(deadline) {
				t.Fatalf("port %s still accepting 10 s after the context ended", port)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// One port refused: logged, the other served.
	dir2 := t.TempDir()
	res2 := &Result{Config: res.Config, LogStream: console.NewStream()}
	var logged bytes.Buffer // written only by startServices, synchronously
	res2.Logger, res2.Level = console.NewLogger(slog.LevelInfo, &logged, res2.LogStream)
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	startServices(ctx2, res2, unixListen(dir2, 1025))
	defer res2.Close()
	if len(res2.Closers) != 1 {
		t.Fatalf("%d listeners with the log port refused, want 1", len(res2.Closers))
	}
	if c, err := net.Dial("unix", filepath.Join(dir2, "1025.sock")); err == nil {
		c.Close()
		t.Fatal("refused log port accepts")
	}
	dc2, err := net.Dial("unix", filepath.Join(dir2, "1026.sock"))
	if err != nil {
		t.Fatalf("debug console with the log port refused: %v", err)
	}
	dc2.Close()
	if l := logged.String(); !strings.Contains(l, "log stream listener") || !strings.Contains(l, "address in use") {
		t.Fatalf("refused port not logged: %s", l)
	}
}
