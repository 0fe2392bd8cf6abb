package vmbench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/protocol/types"
	"github.com/keelvm/keel/tests/vmm/qemu"
	"github.com/keelvm/keel/tests/vmtest"
)

// EnvBaselineAgent names a second keel-agent binary (say, main's before a
// change) that BenchmarkFirstRPCs boots alternately with the one under
// test, so both are measured under the same host load.
const EnvBaselineAgent = "KEEL_VMBENCH_BASELINE_AGENT"

// startupNIC is a cold-plugged virtio-net NIC with no host back end
// (nothing leaves the guest; on a -netdev hubport qboot hangs before the
// kernel starts), standing in for the pod's eth0 that Kata's runtime
// configures right after the agent answers.
const startupMAC = "02:00:00:00:f1:02"

var startupNIC = []string{"-device", "virtio-net-pci,romfile=,mac=" + startupMAC}

// startupRPC is one request of Kata's sandbox start, as
// src/runtime/virtcontainers (kataAgent.startSandbox, then
// Sandbox.getAndStoreGuestDetails) sends them once grpc.Health answered.
type startupRPC struct {
	name  string
	twice bool // sent a second time (idempotent), to tell first-call costs apart
	call  func(context.Context, pb.AgentServiceService) error
}

var startupRPCs = []startupRPC{
	{"UpdateInterface", true, func(ctx context.Context, a pb.AgentServiceService) error {
		_, err := a.UpdateInterface(ctx, &pb.UpdateInterfaceRequest{Interface: &types.Interface{
			Device: "eth0", Name: "eth0", HwAddr: startupMAC, Mtu: 1500,
			IPAddresses: []*types.IPAddress{{Family: types.IPFamily_v4, Address: "10.212.0.2", Mask: "24"}},
		}})
		return err
	}},
	{"UpdateRoutes", true, func(ctx context.Context, a pb.AgentServiceService) error {
		_, err := a.UpdateRoutes(ctx, &pb.UpdateRoutesRequest{Routes: &pb.Routes{Routes: []*types.Route{
			{Dest: "10.212.0.0/24", Device: "eth0", Scope: 253, Source: "10.212.0.2"},
			{Gateway: "10.212.0.1", Device: "eth0"},
		}}})
		return err
	}},
	{"AddARPNeighbors", true, func(ctx context.Context, a pb.AgentServiceService) error {
		_, err := a.AddARPNeighbors(ctx, &pb.AddARPNeighborsRequest{Neighbors: &pb.ARPNeighbors{ARPNeighbors: []*types.ARPNeighbor{
			{ToIPAddress: &types.IPAddress{Address: "10.212.0.1"}, Device: "eth0", Lladdr: "02:00:00:00:f1:01", State: 0x80},
		}}})
		return err
	}},
	{"CreateSandbox", false, func(ctx context.Context, a pb.AgentServiceService) error {
		_, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{Hostname: "pod", SandboxId: "pod"})
		return err
	}},
	{"GetGuestDetails", true, func(ctx context.Context, a pb.AgentServiceService) error {
		d, err := a.GetGuestDetails(ctx, &pb.GuestDetailsRequest{MemBlockSize: true, MemHotplugProbe: true})
		if err == nil && len(d.GetAgentDetails().GetExtraFeatures()) == 0 {
			err = fmt.Errorf("no extra_features in %v", d)
		}
		return err
	}},
}

// rpcTiming is one request's round trip and the TCG translation blocks
// QEMU made meanwhile (code the guest ran for the first time).
type rpcTiming struct {
	d   time.Duration
	tbs float64
}

// startupRun is one boot: QEMU start -> the first gated answer, then each
// startupRPCs call (first, second).
type startupRun struct {
	first         time.Duration // QEMU start -> the first gated RPC answered
	calls, second []rpcTiming
}

var startupImages struct {
	once sync.Once
	imgs []string // the agent under test, then the baseline (if any)
}

// BenchmarkFirstRPCs times what Kata's runtime sends right after the agent
// is reachable, in its order: UpdateInterface, UpdateRoutes,
// AddARPNeighbors (the pod's eth0), CreateSandbox, GetGuestDetails
// (mem_block_size, mem_hotplug_probe). Each boot sends them in turn, then
// again each idempotent one: a first call much slower than the second pays
// a one-time cost, which the TCG translation block count made meanwhile
// tells apart from the guest's own work. Reported per RPC, medians:
// <rpc>-1st-ms, <rpc>-2nd-ms, <rpc>-1st-tbs (UpdateInterface's first call
// includes the wait for the end of the boot, agent/bootgate); first-gated-s
// is QEMU start -> UpdateInterface answered. The details-first
// sub-benchmark sends GetGuestDetails first instead, as BenchmarkP6Boot's
// keel-first-rpc-s does (then first-gated-s is that figure). With $KEEL_VMBENCH_BASELINE_AGENT
// set, that agent boots alternately with the one under test and every
// metric is also reported for it (base-...) with first-gated-ratio and
// details-1st-ratio (under test / baseline, medians of the per-iteration
// ratios) and their spread (-min, -max).
func BenchmarkFirstRPCs(b *testing.B) {
	b.Run("kata-order", func(b *testing.B) { benchFirstRPCs(b, startupRPCs) })
	details := startupRPCs[len(startupRPCs)-1]
	b.Run("details-first", func(b *testing.B) {
		benchFirstRPCs(b, append([]startupRPC{details}, startupRPCs[:len(startupRPCs)-1]...))
	})
}

func benchFirstRPCs(b *testing.B, order []startupRPC) {
	needVM(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	kernel := keelKernel(b, ctx)
	startupImages.once.Do(func() {
		dir := sharedDir(b)
		agent, err := vmtest.AgentBinary(ctx)
		if err != nil {
			b.Fatal(err)
		}
		startupImages.imgs = append(startupImages.imgs, daxImage(b, ctx, dir, agent, false, nil))
		if base := os.Getenv(EnvBaselineAgent); base != "" {
			// daxImage names the image after the binary: copy it under
			// a name of its own.
			data, err := os.ReadFile(base)
			if err != nil {
				b.Fatal(err)
			}
			p := filepath.Join(dir, "keel-agent-baseline")
			if err := os.WriteFile(p, data, 0o755); err != nil {
				b.Fatal(err)
			}
			startupImages.imgs = append(startupImages.imgs, daxImage(b, ctx, dir, p, false, nil))
		}
	})
	if len(startupImages.imgs) == 0 {
		b.Fatal("the images were not built (see the first failure)")
	}
	arms := len(startupImages.imgs)
	runs := make([][]startupRun, arms)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := 0; j < arms; j++ {
			a := (i + j) % arms // alternate which boots first
			bctx, bcancel := context.WithTimeout(ctx, BootTimeout)
			r, err := bootStartup(bctx, kernel, startupImages.imgs[a], order)
			bcancel()
			if err != nil {
				b.Fatal(err)
			}
			runs[a] = append(runs[a], r)
			b.Logf("iteration %d arm %d: first gated %.3fs, %s 1st %v 2nd %v", i, a, r.first.Seconds(),
				order[0].name, r.calls[0].d, r.second[0].d)
		}
	}
	b.StopTimer()
	report := func(prefix string, rs []startupRun) {
		b.ReportMetric(median(pick(rs, func(r startupRun) float64 { return r.first.Seconds() })), prefix+"first-gated-s")
		for k, rpc := range order {
			b.ReportMetric(median(pick(rs, func(r startupRun) float64 { return ms(r.calls[k].d) })), prefix+rpc.name+"-1st-ms")
			b.ReportMetric(median(pick(rs, func(r startupRun) float64 { return r.calls[k].tbs })), prefix+rpc.name+"-1st-tbs")
			if rpc.twice {
				b.ReportMetric(median(pick(rs, func(r startupRun) float64 { return ms(r.second[k].d) })), prefix+rpc.name+"-2nd-ms")
			}
		}
	}
	report("", runs[0])
	if arms > 1 {
		report("base-", runs[1])
		details := slices.IndexFunc(order, func(r startupRPC) bool { return r.name == "GetGuestDetails" })
		ratio := func(name string, f func(startupRun) float64) {
			rs := make([]float64, len(runs[0]))
			for i := range rs {
				rs[i] = f(runs[0][i]) / f(runs[1][i])
			}
			b.ReportMetric(median(rs), name+"-ratio")
			b.ReportMetric(minOf(rs), name+"-ratio-min")
			b.ReportMetric(maxOf(rs), name+"-ratio-max")
		}
		ratio("first-gated", func(r startupRun) float64 { return r.first.Seconds() })
		ratio("details-1st", func(r startupRun) float64 { return ms(r.calls[details].d) })
	}
	b.ReportMetric(loadAverage(), "load1")
}

// bootStartup boots img with the pod NIC and sends the RPCs of order.
func bootStartup(ctx context.Context, kernel, img string, order []startupRPC) (startupRun, error) {
	var r startupRun
	g, err := vmtest.Boot(ctx, vmtest.Config{
		Kernel: kernel, NoInitrd: true, Append: daxRoot,
		Pmem: []qemu.PmemDevice{{Path: img, Kind: qemu.VirtioPmem, ReadOnly: true}},
		QEMU: fastQEMU(startupNIC...),
	})
	if err != nil {
		return r, err
	}
	defer g.Close()
	c, err := g.Dial(ctx)
	if err != nil {
		return r, err
	}
	defer c.Close()
	timed := func(rpc startupRPC) (rpcTiming, error) {
		tb0 := tbCount(ctx, g.VM)
		start := time.Now()
		err := rpc.call(ctx, c.Agent)
		d := time.Since(start)
		if err != nil {
			return rpcTiming{}, fmt.Errorf("%s: %w\nserial console:\n%s", rpc.name, err, g.VM.SerialLog())
		}
		return rpcTiming{d: d, tbs: tbCount(ctx, g.VM) - tb0}, nil
	}
	for k, rpc := range order {
		t, err := timed(rpc)
		if err != nil {
			return r, err
		}
		if k == 0 {
			r.first = time.Since(g.Booted)
		}
		r.calls = append(r.calls, t)
	}
	for _, rpc := range order {
		var t rpcTiming
		if rpc.twice {
			if t, err = timed(rpc); err != nil {
				return r, err
			}
		}
		r.second = append(r.second, t)
	}
	return r, nil
}

func pick(rs []startupRun, f func(startupRun) float64) []float64 {
	out := make([]float64, len(rs))
	for i, r := range rs {
		out[i] = f(r)
	}
	return out
}

func minOf(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs {
		m = min(m, x)
	}
	return m
}

func maxOf(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}
