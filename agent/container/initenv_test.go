package container

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
)

// gomaxprocsAtStart is the test process's own GOMAXPROCS variable, read
// before any Sandbox exists.
var gomaxprocsAtStart, gomaxprocsPreset = os.LookupEnv("GOMAXPROCS")

// TestInitsRunSingleProc: a container's init (waiting at the exec fifo,
// before StartContainer) runs with GOMAXPROCS=1 when the agent has no
// GOMAXPROCS of its own, else with the agent's; the container's program
// never sees the variable.
func TestInitsRunSingleProc(t *testing.T) {
	s := newSandbox(t)
	want := "GOMAXPROCS=1"
	if gomaxprocsPreset {
		want = "GOMAXPROCS=" + gomaxprocsAtStart
	}
	io := newIO(t, false)
	c, err := s.CreateContainer(ContainerConfig{ID: uniqueID("gmp"), Spec: testSpec("/bin/sh", "-c", "env; echo done"), IO: io})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", c.InitProcess().Pid))
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Split(string(b), "\x00")
	if !slices.Contains(env, want) {
		t.Errorf("created init's environment %q lacks %q", env, want)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	out := readAll(t, io)
	if !strings.HasSuffix(out, "done\n") || strings.Contains(out, "GOMAXPROCS") {
		t.Errorf("container's environment: %q (want no GOMAXPROCS)", out)
	}
	if st := waitStatus(t, c.InitProcess()); st.Code != 0 {
		t.Errorf("status %+v", st)
	}
	if err := s.RemoveContainer(context.Background(), c.ID(), 0); err != nil {
		t.Fatal(err)
	}
}

// TestInitLogLevel: a container's init and its nsexec bootstrap are told
// the level of the logger that forwards their lines (logrus's standard
// logger, info unless changed), so they do not write debug lines that the
// agent would only decode and drop; at debug they are told debug.
func TestInitLogLevel(t *testing.T) {
	s := newSandbox(t)
	defer logrus.SetLevel(logrus.GetLevel())
	for _, tc := range []struct {
		agent slog.Level
		level logrus.Level
	}{
		{slog.LevelInfo, logrus.InfoLevel},
		{slog.LevelDebug, logrus.DebugLevel},
		{slog.LevelWarn, logrus.WarnLevel},
		{slog.LevelError, logrus.ErrorLevel},
	} {
		level := tc.level
		SetLogLevel(tc.agent)
		c, err := s.CreateContainer(ContainerConfig{ID: uniqueID("loglevel"), Spec: testSpec("/bin/true")})
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", c.InitProcess().Pid))
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("_LIBCONTAINER_LOGLEVEL=%d", level)
		if env := strings.Split(string(b), "\x00"); !slices.Contains(env, want) {
			t.Errorf("agent at %v: created init's environment %q lacks %q", tc.agent, env, want)
		}
		if err := s.RemoveContainer(context.Background(), c.ID(), 0); err != nil {
			t.Fatal(err)
		}
	}
}

// TestInitArgsAndPipe: libcontainer starts a container's init as
// "<argv0> init" with _LIBCONTAINER_INITPIPE in its environment, exactly
// what protocol/internal/containerinit.Running looks for to skip the
// protocol's descriptor registration in container inits (should a
// libcontainer upgrade change that, every init would pay for it again).
func TestInitArgsAndPipe(t *testing.T) {
	s := newSandbox(t)
	c, err := s.CreateContainer(ContainerConfig{ID: uniqueID("initargs"), Spec: testSpec("/bin/true")})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.RemoveContainer(context.Background(), c.ID(), 0); err != nil {
			t.Error(err)
		}
	}()
	pid := c.InitProcess().Pid
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	if args := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00"); len(args) != 2 || args[1] != "init" {
		t.Errorf("created init's arguments %q, want [argv0 init]", args)
	}
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(strings.Split(string(environ), "\x00"), func(e string) bool {
		return strings.HasPrefix(e, "_LIBCONTAINER_INITPIPE=") && len(e) > len("_LIBCONTAINER_INITPIPE=")
	}) {
		t.Errorf("created init's environment %q has no _LIBCONTAINER_INITPIPE", environ)
	}
}
