// Package containerinit tells the generated protocol packages whether this
// process is a container init re-executed by libcontainer, which never
// uses the protocol: their descriptor registration (the costliest package
// initialisation in keel-agent) is skipped there.
//
// libcontainer starts every container init and every exec'd process by
// re-executing keel-agent as "<argv0> init" with _LIBCONTAINER_INITPIPE in
// its environment; the agent turns into libcontainer's init from an init
// func (cmd/keel-agent/libcontainer_init.go) and that process then execs
// the container's program or exits, never reaching main. Go runs every
// package's init before that dispatch, so without the skip each container
// start and exec paid for building the AgentService descriptors (about
// 1.2 ms of the ~5 ms of package initialisation per init on the host).
// protocol/generate.sh inserts the check into each generated init func.
package containerinit

import "os"

// Running reports whether this process is libcontainer's re-executed init:
// exactly the argument "init" and libcontainer's init pipe variable set.
// Any other process (the agent, keelctl, tests) registers as usual.
func Running() bool {
	return len(os.Args) == 2 && os.Args[1] == "init" && os.Getenv("_LIBCONTAINER_INITPIPE") != ""
}
