package service

import (
	"fmt"
	"strings"

	pb "github.com/keelvm/keel/protocol/grpc"
)

// RPCTable renders the Markdown table of AgentService RPCs and whether this
// build implements each, in the order of agent.proto. README.md embeds it
// between the markers below; readme_test.go keeps the two equal.
func RPCTable() string {
	impl := map[string]bool{}
	for _, n := range Implemented() {
		impl[n] = true
	}
	var b strings.Builder
	b.WriteString("| RPC | request → response | state |\n|---|---|---|\n")
	svc := pb.File_agent_proto.Services().ByName("AgentService")
	done := 0
	for i := 0; i < svc.Methods().Len(); i++ {
		m := svc.Methods().Get(i)
		state := "Unimplemented"
		if impl[string(m.Name())] {
			state = "implemented"
			done++
		}
		fmt.Fprintf(&b, "| %s | %s → %s | %s |\n", m.Name(), m.Input().Name(), m.Output().Name(), state)
	}
	fmt.Fprintf(&b, "\n%d of %d AgentService RPCs implemented; grpc.Health (Check, Version) is always served.\n", done, svc.Methods().Len())
	return b.String()
}
