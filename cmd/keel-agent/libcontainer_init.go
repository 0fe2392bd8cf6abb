package main

import (
	"os"

	"github.com/opencontainers/runc/libcontainer"
	// nsenter's cgo constructor runs nsexec() before the Go runtime starts
	// when this binary is re-executed as "keel-agent init" by libcontainer.
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
)

// libcontainer starts every container process by re-executing this binary
// (a sealed copy of /proc/self/exe) with the single argument "init". That
// process must become the container's init (or the exec'd process) before
// main parses any flag or touches the guest, so it is dispatched here, in an
// init func. libcontainer.Init does not return.
func init() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init()
	}
}
