// Command sliminit is the smallest binary libcontainer could re-execute as
// a container's init: libcontainer and its nsenter constructor, nothing
// else. BenchmarkSlimInitStart starts it the way libcontainer starts
// keel-agent (`BIN init`), to price what the agent's other packages add to
// every container start.
package main

import (
	"os"

	"github.com/opencontainers/runc/libcontainer"
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init()
	}
	os.Exit(2)
}
