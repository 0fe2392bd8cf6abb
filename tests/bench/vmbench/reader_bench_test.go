package vmbench

import "testing"

// BenchmarkStdoutVsockReaderPaired is BenchmarkStdoutVsock's raw,
// readstdout (the generated client, as Kata's shim) and reader (Keel's
// client stream reader, protocol/outputreader) arms taken in turns within
// every iteration, in a rotating order, from the same guest: load drifting
// between separate benchmarks cancels. Reports reader/raw (P3 VM for
// Keel's client), readstdout/raw (for Kata's), reader/readstdout, and
// this process's CPU per MB for each (the hybrid-vsock device runs in it
// too, tests/vmm/vsockdev, the same for every arm).
func BenchmarkStdoutVsockReaderPaired(b *testing.B) {
	needVM(b)
	g, c := streamVM(b)
	modes := []string{"raw", "readstdout", "reader"}
	tot, hostCPU := streamInTurns(b, g, c, modes)
	mbps := func(m int) float64 { return float64(tot[m].bytes) / tot[m].took.Seconds() / 1e6 }
	b.ReportMetric(mbps(2)/mbps(0), "reader/raw")
	b.ReportMetric(mbps(1)/mbps(0), "readstdout/raw")
	b.ReportMetric(mbps(2)/mbps(1), "reader/readstdout")
	for m, name := range modes {
		b.ReportMetric(mbps(m), name+"-MB/s")
		b.ReportMetric(hostCPU[m]*1e3/(float64(tot[m].bytes)/1e6), name+"-host-cpu-ms/MB")
	}
	b.ReportMetric(loadAverage(), "load1")
}
