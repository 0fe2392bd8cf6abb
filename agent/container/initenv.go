package container

import "os"

// singleProcInits makes libcontainer start every container init and exec'd
// process's bootstrap with GOMAXPROCS=1, unless the agent's environment
// sets GOMAXPROCS (then that value goes through, as before).
//
// Why: libcontainer re-executes the agent binary as each container's init
// and passes the agent's GOMAXPROCS variable on to it ("GOMAXPROCS=" when
// unset, so the Go runtime sizes itself to every CPU). That init does its
// work on one goroutine, but with more than one P the runtime starts a
// thread per P for its background goroutines, and the init's final execve
// must kill and wait out every such thread. Measured with the paired wire
// benchmarks on 2 loaded CPUs: lifecycle ratio 0.90-0.92, exec 0.89-0.95.
// A 1-vCPU guest has GOMAXPROCS 1 already. The container's program never
// sees the variable: libcontainer execs it with the spec's environment
// only. Only the Go runtime reads GOMAXPROCS, and only at start, so the
// agent keeps its own setting; programs the agent starts with its inherited environment (OCI
// hooks given no env) see GOMAXPROCS=1 too, which only limits a Go
// program's parallelism.
func singleProcInits() error {
	if _, set := os.LookupEnv("GOMAXPROCS"); set {
		return nil
	}
	return os.Setenv("GOMAXPROCS", "1")
}
