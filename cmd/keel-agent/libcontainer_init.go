package main

import (
	"os"
	"runtime"

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
//
// Otherwise the main goroutine is locked to the main thread. libcontainer
// (process_linux.go goCreateMountSources) joins each new container's mount
// namespace on a locked thread and lets the goroutine exit so the thread
// dies; but Go never kills the main thread, it parks it, and that thread
// would stay in the container's mount namespace for good, pinning its
// mounts (the rootfs stays busy after RemoveContainer) and making
// /proc/self/mountinfo show the container's view. Locking main here keeps
// every other goroutine off the main thread.
func init() {
	if isLibcontainerInit(os.Args, os.Getenv) {
		libcontainer.Init()
	}
	runtime.LockOSThread()
}

// isLibcontainerInit reports whether this process is a container init
// re-executed by libcontainer. The argument alone is not enough: the kernel
// passes bare words of its command line it does not know (a stray "init")
// to PID 1 as arguments, and libcontainer.Init run as PID 1 exits, which
// panics the kernel. A re-executed init always has the init pipe
// libcontainer hands it in _LIBCONTAINER_INITPIPE, which the kernel never
// sets. The PID cannot tell them apart: a container init in its own PID
// namespace is PID 1 there too.
func isLibcontainerInit(args []string, getenv func(string) string) bool {
	return len(args) > 1 && args[1] == "init" && getenv("_LIBCONTAINER_INITPIPE") != ""
}
