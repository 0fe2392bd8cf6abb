package vmbench

import (
	"context"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/keelvm/keel/tests/vmm/qemu"
	"github.com/keelvm/keel/tests/vmtest"
)

// splitArm is one init of BenchmarkP6BootSplit: the trivial init built
// three ways, then keel-agent.
type splitArm struct {
	name string // metric prefix
	out  string // binary name in the scratch dir
	tags string // "" pure Go; else linked like keel-agent with these tags
}

var splitArms = []splitArm{
	{"go", "trivialinit", ""},
	{"cgo", "trivialinit-cgo", "cgoruntime"},
	{"imports", "trivialinit-imports", "keelimports"},
}

var splitImages struct {
	once sync.Once
	imgs []string // per splitArms, then keel-agent's
}

// BenchmarkP6BootSplit splits P6's wall-clock gap between the trivial init
// and keel-agent into what each part of keel-agent adds, every arm booted
// once per iteration on the same kernel, QEMU and DAX image layout as
// BenchmarkP6Boot:
//
//   - go: the trivial init (pure Go, no cgo): P6's baseline;
//   - cgo: the same program linked like keel-agent (cgo runtime, static
//     glibc, Makefile's tags and link flags);
//   - imports: that, plus every package keel-agent's main imports (their
//     package initialisation and keel-agent's binary size), still only
//     listening;
//   - keel: keel-agent.
//
// Reported, as medians over the iterations of each arm minus the go arm
// booted in the same iteration (paired: host load moves both): guest
// uptime when main started (<arm>-start-vs-go-ms: exec, Go runtime start
// and package initialisation before main), when it served
// (<arm>-ready-vs-go-ms; keel: every RPC, as in BenchmarkP6Boot), and
// QEMU's CPU time by the first answer (<arm>-qemu-cpu-vs-go-ms, what a
// loaded host moves least); go-start-s and go-ready-s are the baseline's
// own medians, keel-boot-ms keel-agent's init_start -> serving. With -icount (KEEL_VMBENCH_ICOUNT=1) the same
// split counts guest instructions instead of wall time.
func BenchmarkP6BootSplit(b *testing.B) {
	needVM(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	kernel := keelKernel(b, ctx)
	splitImages.once.Do(func() {
		dir := sharedDir(b)
		for _, a := range splitArms {
			splitImages.imgs = append(splitImages.imgs, daxImage(b, ctx, dir, buildInit(b, dir, "trivialinit", a.out, a.tags), false, nil))
		}
		agent, err := vmtest.AgentBinary(ctx)
		if err != nil {
			b.Fatal(err)
		}
		splitImages.imgs = append(splitImages.imgs, daxImage(b, ctx, dir, agent, false, nil))
	})
	if len(splitImages.imgs) != len(splitArms)+1 {
		b.Fatal("the split images were not built (see the first failure)")
	}
	var qargs []string
	if icountSplit() {
		qargs = []string{"-icount", "shift=0"}
	}
	n := len(splitArms) + 1
	starts, readies, cpus, tbs := make([][]float64, n), make([][]float64, n), make([][]float64, n), make([][]float64, n)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Rotate the order each iteration so no arm always boots first
		// after the previous guest's teardown.
		for j := 0; j < n; j++ {
			a := (i + j) % n
			bctx, bcancel := context.WithTimeout(ctx, BootTimeout)
			var t bootTimes
			var err error
			if a < len(splitArms) {
				t, err = bootTrivial(bctx, kernel, splitImages.imgs[a], qemu.VirtioPmem, qargs...)
			} else {
				t, err = bootKeel(bctx, kernel, splitImages.imgs[a], qemu.VirtioPmem, qargs...)
			}
			bcancel()
			if err != nil {
				b.Fatal(err)
			}
			starts[a], readies[a], cpus[a] = append(starts[a], t.InitStart), append(readies[a], t.Ready), append(cpus[a], t.CPU)
			tbs[a] = append(tbs[a], t.TBs)
			b.Logf("iteration %d arm %d: start %.3f ready %.3f first %.3f cpu %.2f TBs %.0f", i, a, t.InitStart, t.Ready, t.First.Seconds(), t.CPU, t.TBs)
		}
	}
	b.StopTimer()
	// Each arm against the pure-Go trivial init booted in the same
	// iteration (paired: the host's load moves both), medians in ms.
	diff := func(xs [][]float64, a int) float64 {
		d := make([]float64, len(xs[a]))
		for i := range d {
			d[i] = (xs[a][i] - xs[0][i]) * 1000
		}
		return median(d)
	}
	b.ReportMetric(median(starts[0]), "go-start-s")
	b.ReportMetric(median(readies[0]), "go-ready-s")
	b.ReportMetric(median(tbs[0]), "go-tbs")
	for a := 1; a < n; a++ {
		name := "keel"
		if a < len(splitArms) {
			name = splitArms[a].name
		}
		b.ReportMetric(diff(starts, a), name+"-start-vs-go-ms")
		b.ReportMetric(diff(readies, a), name+"-ready-vs-go-ms")
		b.ReportMetric(diff(cpus, a), name+"-qemu-cpu-vs-go-ms")
		b.ReportMetric(median(tbs[a]), name+"-tbs")
	}
	k := n - 1
	boot := make([]float64, len(starts[k]))
	for i := range boot {
		boot[i] = (readies[k][i] - starts[k][i]) * 1000
	}
	b.ReportMetric(median(boot), "keel-boot-ms")
	b.ReportMetric(loadAverage(), "load1")
}

func icountSplit() bool { return os.Getenv("KEEL_VMBENCH_ICOUNT") == "1" }

// median of xs (0 when empty); xs is not modified.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
