package containerinit_test

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/protocol/internal/containerinit"
	"github.com/keelvm/keel/protocol/types"
)

// TestMain answers for TestRegistrationSkippedInContainerInit when this
// test binary is re-executed the way libcontainer re-executes keel-agent:
// every package init has run by now, so it reports what they registered.
func TestMain(m *testing.M) {
	if len(os.Args) >= 2 && os.Args[1] == "init" {
		fmt.Printf("running=%v agent=%v oci=%v health=%v types=%v\n", containerinit.Running(),
			pb.File_agent_proto != nil, pb.File_oci_proto != nil, pb.File_health_proto != nil, types.File_types_proto != nil)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestRegistrationSkippedInContainerInit: a process started as libcontainer
// starts a container init ("<argv0> init" with _LIBCONTAINER_INITPIPE set)
// registers none of the protocol's descriptors; one that only looks like
// it (the argument without the variable, or another argument after it)
// registers them all, as every other process does.
func TestRegistrationSkippedInContainerInit(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const none = "running=true agent=false oci=false health=false types=false"
	const all = "running=false agent=true oci=true health=true types=true"
	for _, tc := range []struct {
		args []string
		pipe bool
		want string
	}{
		{[]string{"init"}, true, none},
		{[]string{"init"}, false, all},
		{[]string{"init", "extra"}, true, all},
	} {
		cmd := exec.Command(exe, tc.args...)
		cmd.Env = os.Environ()
		if tc.pipe {
			cmd.Env = append(cmd.Env, "_LIBCONTAINER_INITPIPE=3")
		}
		out, err := cmd.CombinedOutput()
		if got := strings.TrimSpace(string(out)); err != nil || got != tc.want {
			t.Errorf("args %q, init pipe %v: %q (%v), want %q", tc.args, tc.pipe, got, err, tc.want)
		}
	}
	if containerinit.Running() || pb.File_agent_proto == nil {
		t.Errorf("this test process (args %q) counts as a container init or has no agent.proto", os.Args)
	}
}
