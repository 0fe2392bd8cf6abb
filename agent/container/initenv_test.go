package container

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
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
