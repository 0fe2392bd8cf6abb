package step

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestStrings(t *testing.T) {
	fb := ""
	for _, tc := range []struct {
		s    Step
		want string
	}{
		{Mount{Source: "proc", Target: "/proc", FSType: "proc", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC}, "mount -t proc -o nosuid,nodev,noexec proc /proc"},
		{Mount{Source: "cgroup2", Target: "/sys/fs/cgroup", FSType: "cgroup2", Data: "nsdelegate", Fallback: &fb}, "mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup"},
		{Mount{Source: "/dev", Target: "/new/dev", Flags: unix.MS_MOVE}, "mount -o move /dev /new/dev"},
		{Mkdir{Path: "/dev/pts", Mode: 0o755}, "mkdir -p -m 0755 /dev/pts"},
		{Symlink{Target: "pts/ptmx", Link: "/dev/ptmx"}, "ln -sfn pts/ptmx /dev/ptmx"},
		{Write{Path: "/proc/self/oom_score_adj", Data: "-997"}, `echo "-997" > /proc/self/oom_score_adj`},
		{Func{Line: "ip link set lo up"}, "ip link set lo up"},
	} {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("got %q want %q", got, tc.want)
		}
	}
}

func TestRun(t *testing.T) {
	dir := t.TempDir()
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f := filepath.Join(dir, "f")
	os.WriteFile(f, nil, 0o644)
	boom := errors.New("boom")
	ran := false
	err := Run(log, []Step{
		Mkdir{Path: filepath.Join(dir, "a/b"), Mode: 0o700},
		Symlink{Target: "b", Link: filepath.Join(dir, "a/l")},
		Symlink{Target: "b", Link: filepath.Join(dir, "a/l")}, // idempotent
		Write{Path: f, Data: "hello"},
		Write{Path: filepath.Join(dir, "missing"), Data: "x", Opt: true},
		Func{Line: "fail", Fn: func() error { return boom }},
		Func{Line: "never", Fn: func() error { ran = true; return nil }},
	})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), `"fail"`) || ran {
		t.Fatalf("Run = %v, ran=%v", err, ran)
	}
	if b, _ := os.ReadFile(f); string(b) != "hello" {
		t.Errorf("write: %q", b)
	}
	if l, _ := os.Readlink(filepath.Join(dir, "a/l")); l != "b" {
		t.Errorf("symlink: %q", l)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "a/b")); fi == nil || !fi.IsDir() {
		t.Error("mkdir")
	}
	out := buf.String()
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, "level=ERROR msg=fail") {
		t.Errorf("log:\n%s", out)
	}
}

func TestMountedAs(t *testing.T) {
	mi := "22 1 0:20 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw,size=1k\n" +
		"23 22 0:21 / /dev/pts rw - devpts devpts rw\n" +
		"bad line\n"
	for _, tc := range []struct {
		target, fstype string
		want           bool
	}{
		{"/dev", "devtmpfs", true},
		{"/dev", "tmpfs", false},
		{"/dev/pts", "devpts", true},
		{"/proc", "proc", false},
	} {
		if got := MountedAs(mi, tc.target, tc.fstype); got != tc.want {
			t.Errorf("MountedAs(%s, %s) = %v", tc.target, tc.fstype, got)
		}
	}
}

// TestRunReporting: each step's line is reported before it runs, in order,
// up to the required step that fails, whose error names it (BootStep).
func TestRunReporting(t *testing.T) {
	boom := errors.New("no such device")
	var ran, reported []string
	steps := []Step{
		Func{Line: "one", Fn: func() error { ran = append(ran, "one"); return nil }},
		Func{Line: "two", Opt: true, Fn: func() error { ran = append(ran, "two"); return boom }},
		Func{Line: "three", Fn: func() error {
			ran = append(ran, "three")
			if len(reported) == 0 || reported[len(reported)-1] != "three" {
				t.Error("step three ran before it was reported")
			}
			return boom
		}},
		Func{Line: "four", Fn: func() error { ran = append(ran, "four"); return nil }},
	}
	err := RunReporting(slog.New(slog.DiscardHandler), steps, func(line string) { reported = append(reported, line) })
	if got := strings.Join(reported, ","); got != "one,two,three" || strings.Join(ran, ",") != got {
		t.Fatalf("reported %q, ran %q; want one,two,three both", reported, ran)
	}
	var se *Error
	if !errors.As(err, &se) || se.BootStep() != "three" || !errors.Is(err, boom) || !strings.Contains(err.Error(), `"three"`) {
		t.Fatalf("error %v, want a step Error naming \"three\"", err)
	}
}
