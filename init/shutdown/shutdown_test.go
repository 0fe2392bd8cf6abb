package shutdown

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"
)

func resetState() {
	mu.Lock()
	hooks = nil
	mu.Unlock()
	once = sync.Once{}
}

func TestHostModeNeverReboots(t *testing.T) {
	resetState()
	defer resetState()
	called := false
	rebootFn = func(int) error { called = true; return nil }
	defer func() { rebootFn = nil }()
	var order []string
	OnStop("a", func(context.Context) error { order = append(order, "a"); return nil })
	OnStop("b", func(context.Context) error { order = append(order, "b"); return errors.New("b failed") })
	OnStop("c", func(context.Context) error { panic("c") })
	OnStop("d", func(context.Context) error { order = append(order, "d"); return nil })
	if err := PowerOff("test"); !errors.Is(err, ErrNotPID1) {
		t.Fatalf("PowerOff in host mode = %v", err)
	}
	if called {
		t.Fatal("reboot(2) called outside PID 1")
	}
	if !reflect.DeepEqual(order, []string{"a", "b", "d"}) {
		t.Fatalf("hooks ran %v", order)
	}
	if err := Reboot("again"); !errors.Is(err, ErrNotPID1) {
		t.Fatalf("Reboot = %v", err)
	}
	if stop := HandleSignals(); stop == nil {
		t.Fatal("nil stop")
	} else {
		stop()
	}
}

func TestHookTimeout(t *testing.T) {
	old := HookTimeout
	HookTimeout = 300 * time.Millisecond
	defer func() { HookTimeout = old }()
	resetState()
	defer resetState()
	after := false
	OnStop("hang", func(ctx context.Context) error { <-ctx.Done(); time.Sleep(time.Hour); return nil })
	OnStop("after", func(context.Context) error { after = true; return nil })
	start := time.Now()
	_ = PowerOff("timeout test")
	// Not before the hook's timeout, and long before the hour the hook
	// sleeps: HookTimeout + 5 s (+1 s was a CI flake risk).
	if d := time.Since(start); d < HookTimeout || d > HookTimeout+5*time.Second {
		t.Fatalf("took %v", d)
	}
	if after {
		t.Fatal("hooks after a timed-out hook must be skipped (the deadline is shared)")
	}
}

func TestGuardHostModeRepanics(t *testing.T) {
	defer func() {
		if p := recover(); p != "boom" {
			t.Fatalf("recovered %v", p)
		}
	}()
	func() {
		defer Guard()
		panic("boom")
	}()
}

func TestMountPoints(t *testing.T) {
	f := filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(f, []byte(`22 1 0:21 / / rw - rootfs rootfs rw
23 22 0:22 / /proc rw,nosuid - proc proc rw
24 22 0:23 / /mnt/with\040space rw - tmpfs tmpfs rw
short line
`), 0o644)
	got, err := MountPoints(f)
	if err != nil || !reflect.DeepEqual(got, []string{"/", "/proc", "/mnt/with space"}) {
		t.Fatalf("%q %v", got, err)
	}
	for in, want := range map[string]string{`a\040b`: "a b", `\134`: `\`, `x\04`: `x\04`, `\`: `\`, `\999`: `\999`} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q want %q", in, got, want)
		}
	}
}

func FuzzUnescape(f *testing.F) {
	f.Add(`a\040b\134`)
	f.Add(`\`)
	f.Fuzz(func(t *testing.T, s string) {
		if u := Unescape(s); len(u) > len(s) {
			t.Fatalf("Unescape grew %q to %q", s, u)
		}
	})
}

func TestOthersAlive(t *testing.T) {
	// The test binary's parent (go test) is a user process.
	if !othersAlive() {
		t.Fatal("no other user process found")
	}
}
