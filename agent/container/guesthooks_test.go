package container

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestGuestHooks: the hooks under CreateSandbox's guest_hook_path (Kata's
// <path>/<kind>/<file> layout) run for every container with args
// [file, kind] and the OCI state on stdin; symlinks and non-executable
// files are skipped; a hook stuck forever is bounded by DefaultHookTimeout.
func TestGuestHooks(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(t.TempDir(), "ran")
	if err := os.WriteFile(out, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	script := "#!/bin/sh\nread -r state\necho \"$0 $1 $state\" >> " + out + "\n"
	write := func(rel, body string, mode os.FileMode) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
	}
	write("prestart/pre.sh", script, 0o755)
	write("poststart/post.sh", script, 0o755)
	write("poststop/stop.sh", script, 0o755)
	write("prestart/not-executable.sh", script, 0o644)
	if err := os.Symlink(filepath.Join(dir, "prestart/pre.sh"), filepath.Join(dir, "prestart/link.sh")); err != nil {
		t.Fatal(err)
	}

	s := newSandbox(t)
	if err := s.Create(SandboxConfig{ID: "guesthooks", GuestHookPath: dir}); err != nil {
		t.Fatal(err)
	}
	id := uniqueID("guesthooks")
	c, err := s.CreateContainer(ContainerConfig{ID: id, Spec: testSpec("true")})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveContainer(context.Background(), id, 0); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	// The script sees its own path as $0 (the kernel runs the interpreter
	// on the file) and the kind as $1 (args [file, kind]).
	want := []string{"prestart/pre.sh prestart", "poststart/post.sh poststart", "poststop/stop.sh poststop"}
	if len(lines) != len(want) {
		t.Fatalf("hooks ran:\n%s\nwant exactly %v (symlink and non-executable skipped)", b, want)
	}
	for i, l := range lines {
		f := strings.SplitN(l, " ", 3)
		if len(f) != 3 || f[0]+" "+f[1] != filepath.Join(dir, want[i]) {
			t.Errorf("hook %d: %q, want %s/%s", i, l, dir, want[i])
			continue
		}
		var st specs.State
		if err := json.Unmarshal([]byte(f[2]), &st); err != nil || st.ID != id {
			t.Errorf("hook %d got state %q (%v), want container %q", i, f[2], err, id)
		}
	}

	// A guest hook that never returns is killed at DefaultHookTimeout.
	if testing.Short() {
		return
	}
	write("prestart/zz-stuck.sh", "#!/bin/sh\nexec sleep 1000\n", 0o755)
	s2 := newLaunchSandbox(t, time.Minute)
	if err := s2.Create(SandboxConfig{ID: "guesthooks2", GuestHookPath: dir}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	_, err = s2.CreateContainer(ContainerConfig{ID: uniqueID("stuckhook"), Spec: testSpec("true")})
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("create with a stuck guest hook: %v", err)
	}
	if d := time.Since(t0); d < DefaultHookTimeout || d > DefaultHookTimeout+20*time.Second {
		t.Errorf("stuck guest hook ended after %v, want about DefaultHookTimeout (%v)", d, DefaultHookTimeout)
	}

	// A relative path is refused.
	s3 := newSandbox(t)
	if err := s3.Create(SandboxConfig{GuestHookPath: "hooks"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("relative guest_hook_path: %v", err)
	}
}
