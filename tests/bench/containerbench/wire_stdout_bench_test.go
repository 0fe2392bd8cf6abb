package containerbench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/metrics"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/promtext"
)

// BenchmarkAgentStdoutRPC32KiB (P3, wire tier): the same 64 MiB of dd
// output as BenchmarkStdoutRPCPath32KiB, read with 32 KiB ReadStdout calls
// from the keel-agent binary in host mode: gc=policy with the agent's own GC
// policy (agent/gcpolicy), gc=GOGC=N with GOGC=N in the agent's environment
// only (this process, the client, keeps its own). Besides MB/s it reports
// the agent's CPU per MB (agent-cpu-ms/MB), its RssAnon once started
// (idle-rssanon-KiB), right after the first stream's 64 MiB were read
// (rssanon-64MiB-KiB) and after the last of the b.N streams
// (rssanon-end-KiB), and its effective GOGC.
func BenchmarkAgentStdoutRPC32KiB(b *testing.B) {
	for _, gc := range []struct{ name, env string }{
		{"policy", "GOGC"}, {"GOGC=100", "GOGC=100"}, {"GOGC=200", "GOGC=200"}, {"GOGC=400", "GOGC=400"},
	} {
		b.Run("gc="+gc.name, func(b *testing.B) { benchAgentStdout(b, gc.env) })
	}
}

// benchAgentStdout runs BenchmarkAgentStdoutRPC32KiB with env ("GOGC" alone
// unsets it) added to the agent's environment.
func benchAgentStdout(b *testing.B, env string) {
	id := fmt.Sprintf("wire-out-%d", os.Getpid())
	ids := []string{id}
	a, pid := startAgentBin(b, agentBinary(b), &ids, env)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	idle := rssAnonKiB(b, pid)
	if err := runContainer(ctx, a, id, "/bin/sleep", "1000"); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(stdoutBytes)
	var cpu time.Duration
	var after64 uint64
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		eid := fmt.Sprintf("dd%d", i)
		if _, err := a.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: id, ExecId: eid, Process: pbProcess(append([]string{"/bin/" + ddArgs[0]}, ddArgs[1:]...)...)}); err != nil {
			b.Fatal(err)
		}
		cpu0 := agentOwnCPU(b, pid)
		b.StartTimer()
		n, err := drainStdout(ctx, a, id, eid, 32<<10)
		b.StopTimer()
		cpu += agentOwnCPU(b, pid) - cpu0
		if err != nil || n != stdoutBytes {
			b.Fatalf("ReadStdout: %d bytes, %v", n, err)
		}
		if i == 0 {
			after64 = rssAnonKiB(b, pid)
		}
		if w, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: id, ExecId: eid}); err != nil || w.Status != 0 {
			b.Fatalf("WaitProcess: %v %v", w, err)
		}
		b.StartTimer()
	}
	b.ReportMetric(ms(cpu)/float64(b.N*(stdoutBytes>>20)), "agent-cpu-ms/MB")
	b.ReportMetric(float64(idle), "idle-rssanon-KiB")
	b.ReportMetric(float64(after64), "rssanon-64MiB-KiB")
	b.ReportMetric(float64(rssAnonKiB(b, pid)), "rssanon-end-KiB")
	m, err := a.GetMetrics(ctx, &pb.GetMetricsRequest{})
	if err != nil {
		b.Fatal(err)
	}
	gogc, ok := promtext.Value(m.Metrics, "keel_agent_go_gc_percent")
	if !ok {
		b.Fatalf("GetMetrics has no keel_agent_go_gc_percent:\n%s", m.Metrics)
	}
	b.ReportMetric(gogc, "gogc")
}

// agentOwnCPU is the agent's own CPU time (utime+stime, without reaped
// children: dd's CPU is not the agent's).
func agentOwnCPU(tb testing.TB, pid int) time.Duration {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	var utime, stime int64
	f := fieldsAfterComm(b)
	if _, err := fmt.Sscan(f[11]+" "+f[12], &utime, &stime); err != nil {
		tb.Fatalf("/proc/%d/stat: %v", pid, err)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// rssAnonKiB is /proc/<pid>/status RssAnon in KiB.
func rssAnonKiB(tb testing.TB, pid int) uint64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	return metrics.StatusField(b, "RssAnon") >> 10
}

// fieldsAfterComm splits /proc/<pid>/stat after the command name, so that
// f[0] is field 3 (state).
func fieldsAfterComm(stat []byte) []string {
	return strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
}
