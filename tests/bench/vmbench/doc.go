// Package vmbench holds the VM tier of `make bench` (opt-in: KEEL_BENCH_VM=1,
// `make bench-vm`): figures only a booted guest can give, each measured
// against a baseline in the same run, on the same kernel and QEMU (TCG):
//
//   - BenchmarkP6Boot (P6): Keel's kernel (cached by `make kernel`) booting
//     a minimal DAX image straight from virtio-pmem, with keel-agent as
//     /sbin/init vs testdata/trivialinit (a static Go PID 1 that only opens
//     an AF_VSOCK listener), alternately: guest uptime at listener ready,
//     each init's main -> listener time, and QEMU start -> first RPC.
//   - BenchmarkP6BootIcount: the same under -icount shift=0, where the
//     guest clock counts guest instructions (1 ns each) and idle time: the
//     reading of P6 that host load and TCG translation cannot move.
//   - BenchmarkP6BootSplit: where BenchmarkP6Boot's wall-clock gap goes,
//     paired per iteration against the trivial init: the same init linked
//     with cgo like keel-agent, then also linking every package keel-agent's
//     main imports (testdata/trivialinit's build tags), then keel-agent;
//     guest uptime at main and when serving, QEMU CPU, and TCG's
//     translation-block count (KEEL_VMBENCH_ICOUNT=1: under -icount).
//   - BenchmarkBootNVDIMM: the same keel-agent boot on an nvdimm.
//   - BenchmarkFirstRPCs: the first and second call of each RPC Kata's
//     runtime sends once the agent answers (UpdateInterface, UpdateRoutes,
//     AddARPNeighbors, CreateSandbox, GetGuestDetails), with the TCG blocks
//     each first call made: which first calls pay one-time costs;
//     KEEL_VMBENCH_BASELINE_AGENT boots another agent alternately (A/B).
//   - BenchmarkGuestMemory: MemTotal - MemFree - Buffers - Cached and the
//     agent's RssAnon after boot with one idle container, Keel's kernel +
//     DAX root vs Debian's kernel + initramfs (read through GetMetrics).
//   - BenchmarkStdoutVsock: a container's stdout over ReadStdout (32 KiB
//     reads, as Kata's shim) and over passfd, against the same producer
//     (testdata/vsockstream) writing to a raw AF_VSOCK connection.
//   - BenchmarkStdoutVsockPaired: passfd and raw alternately in the same
//     guest, with where the CPU went (guest, producer, QEMU, vsock device).
//     KEEL_VMBENCH_STREAM_APPEND adds kernel parameters to this guest (an
//     agent knob to measure, e.g. agent.container_pipe_size=1048576).
//
// Every guest is booted here; the default `go test` only checks the tools
// and the metrics parsing (TestToolsAreStaticInits, TestParseMemory, TestParseCPUStat,
// TestTrivialInitImportsKeel).
package vmbench
