package containerbench

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	pb "github.com/keelvm/keel/protocol/grpc"
)

// BenchmarkAgentLifecycleAB compares two keel-agent binaries on the wire
// lifecycle within one run: $KEEL_AGENT_BIN (A, or the default build) and
// $KEEL_AGENT_BIN_B (B; skipped without it). Both agents run side by side
// and every iteration drives one lifecycle through each, in alternating
// order, so that a machine whose load drifts (these machines are shared)
// weighs on both alike. It reports each binary's median and the median of
// the per-iteration ratios B/A (paired-ratio), the figure to quote for a
// change: below 1 means B is faster.
func BenchmarkAgentLifecycleAB(b *testing.B) {
	binB := os.Getenv("KEEL_AGENT_BIN_B")
	if binB == "" {
		b.Skip("set KEEL_AGENT_BIN_B to the binary to compare with $KEEL_AGENT_BIN")
	}
	var idsA, idsB []string
	a, _ := startAgentPid(b, &idsA)
	bb, _ := startAgentBin(b, binB, &idsB)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	var latA, latB, ratio []time.Duration
	var phA, phB [nPhases][]time.Duration
	one := func(agent pb.AgentServiceService, ids *[]string, lat *[]time.Duration, ph *[nPhases][]time.Duration, id string) time.Duration {
		*ids = append(*ids, id)
		t0 := time.Now()
		p, err := lifecyclePhases(ctx, agent, id)
		if err != nil {
			b.Fatal(err)
		}
		d := time.Since(t0)
		*lat = append(*lat, d)
		for j := range p {
			ph[j] = append(ph[j], p[j])
		}
		return d
	}
	for i := 0; b.Loop(); i++ {
		var da, db time.Duration
		if i%2 == 0 {
			da = one(a, &idsA, &latA, &phA, fmt.Sprintf("ab-a-%d-%d", os.Getpid(), i))
			db = one(bb, &idsB, &latB, &phB, fmt.Sprintf("ab-b-%d-%d", os.Getpid(), i))
		} else {
			db = one(bb, &idsB, &latB, &phB, fmt.Sprintf("ab-b-%d-%d", os.Getpid(), i))
			da = one(a, &idsA, &latA, &phA, fmt.Sprintf("ab-a-%d-%d", os.Getpid(), i))
		}
		// Ratios kept as Durations (x1000) to reuse percentile.
		ratio = append(ratio, time.Duration(float64(db)/float64(da)*1000))
	}
	b.ReportMetric(ms(percentile(latA, 0.5)), "A-median-ms")
	b.ReportMetric(ms(percentile(latB, 0.5)), "B-median-ms")
	b.ReportMetric(float64(percentile(ratio, 0.5))/1000, "paired-ratio")
	for j := range phA {
		b.ReportMetric(ms(percentile(phA[j], 0.5)), "A-"+phaseUnits[j])
		b.ReportMetric(ms(percentile(phB[j], 0.5)), "B-"+phaseUnits[j])
	}
}

// BenchmarkAgentExecAB is BenchmarkAgentLifecycleAB for P2: exec of
// /bin/true in a running container of each agent, alternating.
func BenchmarkAgentExecAB(b *testing.B) {
	binB := os.Getenv("KEEL_AGENT_BIN_B")
	if binB == "" {
		b.Skip("set KEEL_AGENT_BIN_B to the binary to compare with $KEEL_AGENT_BIN")
	}
	idA, idB := fmt.Sprintf("ab-exec-a-%d", os.Getpid()), fmt.Sprintf("ab-exec-b-%d", os.Getpid())
	idsA, idsB := []string{idA}, []string{idB}
	a, _ := startAgentPid(b, &idsA)
	bb, _ := startAgentBin(b, binB, &idsB)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	for _, c := range []struct {
		agent pb.AgentServiceService
		id    string
	}{{a, idA}, {bb, idB}} {
		if err := runContainer(ctx, c.agent, c.id, "/bin/sleep", "1000"); err != nil {
			b.Fatal(err)
		}
	}
	var latA, latB, ratio []time.Duration
	one := func(agent pb.AgentServiceService, cid string, lat *[]time.Duration, i int) time.Duration {
		t0 := time.Now()
		if err := execTrue(ctx, agent, cid, fmt.Sprintf("x%d", i)); err != nil {
			b.Fatal(err)
		}
		d := time.Since(t0)
		*lat = append(*lat, d)
		return d
	}
	for i := 0; b.Loop(); i++ {
		var da, db time.Duration
		if i%2 == 0 {
			da, db = one(a, idA, &latA, i), one(bb, idB, &latB, i)
		} else {
			db, da = one(bb, idB, &latB, i), one(a, idA, &latA, i)
		}
		ratio = append(ratio, time.Duration(float64(db)/float64(da)*1000))
	}
	b.ReportMetric(ms(percentile(latA, 0.5)), "A-median-ms")
	b.ReportMetric(ms(percentile(latB, 0.5)), "B-median-ms")
	b.ReportMetric(float64(percentile(ratio, 0.5))/1000, "paired-ratio")
}
