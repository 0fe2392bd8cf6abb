// Package guestbench is the in-guest tier of the container benchmarks
// (issue 16): one Debian guest (bookworm minbase + Debian 12's runc and
// crun, the debian recipe) booted on Keel's kernel from a read-only DAX
// root with keel-agent as PID 1, cgroup v2, /run on tmpfs. In that guest:
//
//   - BenchmarkGuestLifecycle (P1) vs BenchmarkGuestRuncRun and
//     BenchmarkGuestCrunRun: create+start+wait+remove of /bin/true through
//     the agent over AF_VSOCK from the host with protocol/client (timed on
//     the host, round trips included) vs `runc run` / `crun run` of the
//     same spec (ociconv of the agent's) looped and timed inside the guest
//     by bench.sh, run through the agent's debug console.
//   - BenchmarkGuestExec (P2) vs BenchmarkGuestRuncExec and
//     BenchmarkGuestCrunExec: exec of /bin/true in a running container.
//   - BenchmarkGuestPairedRun and BenchmarkGuestPairedExec: the same P1 and
//     P2 comparisons, paired round by round (agent, runc, crun, agent, ...)
//     so that load drift on a shared machine hits all three alike; they
//     report agent/runc and agent/crun directly.
//   - BenchmarkGuestRoundTrip: one Health.Check over AF_VSOCK, the wire's
//     share of the agent's figures.
//   - BenchmarkGuestCgroupMigrate and BenchmarkGuestLifecycleCgroup2: the
//     cgroup2 favordynmods A/B, paired (the guest's cgroup2 remounted off,
//     on, off, on, ... between runs): a lone cgroup.procs write after a
//     quiet period, and the P1 lifecycle; each reports on/off.
//
// Every benchmark skips unless KEEL_BENCH_VM=1 (make bench-vm); one guest
// serves them all. Under TCG absolute times mean little: read the ratios
// tests/bench/ratio prints. The default test run only checks bench.sh and
// its bundles on the host with runc and crun (TestBenchScriptOnHost).
package guestbench
