// Package containerbench holds container benchmarks that need a running
// container and a baseline next to them (`make bench` pairs the names):
//
//   - BenchmarkExec vs BenchmarkRuncExec (P2): exec of /bin/true in a
//     running container through the agent's RPC handlers, in-process, vs
//     `runc exec` of the same bundle with Debian's runc.
//   - BenchmarkAgentLifecycle vs BenchmarkRuncRunTmpfs (P1, wire tier) and
//     BenchmarkAgentExec vs BenchmarkRuncExecTmpfs (P2, wire tier): the real
//     keel-agent binary ($KEEL_AGENT_BIN, else built) in host mode, state on
//     a tmpfs as in the guest, driven over a unix socket with
//     protocol/client; runc's state on a tmpfs too, same spec and rootfs.
//     Here every container init is the agent binary re-executed, so its
//     start-up cost counts.
//   - BenchmarkAgentInitStart vs BenchmarkSlimInitStart: `BIN init` up to
//     libcontainer.Init for the agent binary vs a static libcontainer-only
//     binary (testdata/sliminit): what the agent's other packages add to
//     every container start.
//   - BenchmarkCreate200 (P7): 200 live containers; create latency of the
//     first ten vs the last ten (p99-ratio) and the agent's RSS per
//     container (rss-KiB/container); everything removed and checked gone.
//   - BenchmarkStdoutRPCPath1MiB vs BenchmarkRawUnixCopy1MiB: ReadStdout in
//     1 MiB chunks over a real ttrpc connection vs a raw pipe-to-socket copy
//     of the same dd output.
//
// The test binary is libcontainer's init too (see main_test.go). Only a
// small smoke test runs in the default `go test`.
package containerbench
