package vmbench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/metrics"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/promtext"
	"github.com/keelvm/keel/tests/vmm/qemu"
	"github.com/keelvm/keel/tests/vmtest"
)

// memSettle lets the guest finish what the container start set going
// (page-cache fills, deferred frees) before memory is read.
const memSettle = 2 * time.Second

// guestMemory is what GetMetrics says of a guest's memory.
type guestMemory struct {
	// Used is MemTotal - MemFree - Buffers - Cached: memory the guest holds
	// that page-cache reclaim cannot give back.
	Used, Cached, Total, AgentAnon float64 // bytes
}

// BenchmarkGuestMemory boots a guest, creates the sandbox and one idle
// container (busybox sleep) and reads the guest's memory and the agent's
// RssAnon back through GetMetrics (keel_guest_meminfo_bytes,
// keel_agent_anon_memory_bytes), for Keel's kernel booted from the DAX
// root (keel-dax) and for Debian's kernel with the module initramfs, whose
// files (agent, busybox, modules) live in guest RAM (debian-initramfs).
// used-KiB is MemTotal - MemFree - Buffers - Cached; cached-KiB shows
// where an initramfs's files went.
func BenchmarkGuestMemory(b *testing.B) {
	needVM(b)
	b.Run("keel-dax", func(b *testing.B) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		defer cancel()
		kernel := keelKernel(b, ctx)
		img := containerImage(b, ctx)
		benchMemory(b, ctx, vmtest.Config{
			Kernel: kernel, NoInitrd: true, Append: daxRoot,
			Pmem: []qemu.PmemDevice{{Path: img, Kind: qemu.VirtioPmem, ReadOnly: true}},
			QEMU: fastQEMU(),
		})
	})
	b.Run("debian-initramfs", func(b *testing.B) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		defer cancel()
		benchMemory(b, ctx, vmtest.Config{Busybox: true, Append: []string{"agent.log=info"}})
	})
}

func benchMemory(b *testing.B, ctx context.Context, cfg vmtest.Config) {
	var ms []guestMemory
	for i := 0; i < b.N; i++ {
		m, err := idleContainerMemory(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		ms = append(ms, m)
	}
	b.ReportMetric(mean(ms, func(m guestMemory) float64 { return m.Used / 1024 }), "used-KiB")
	b.ReportMetric(mean(ms, func(m guestMemory) float64 { return m.AgentAnon / 1024 }), "agent-anon-KiB")
	b.ReportMetric(mean(ms, func(m guestMemory) float64 { return m.Cached / 1024 }), "cached-KiB")
	b.ReportMetric(mean(ms, func(m guestMemory) float64 { return m.Total / 1024 }), "memtotal-KiB")
	b.ReportMetric(loadAverage(), "load1")
}

// idleContainerMemory boots cfg, starts one idle container and reads the
// memory figures.
func idleContainerMemory(ctx context.Context, cfg vmtest.Config) (guestMemory, error) {
	var m guestMemory
	bctx, cancel := context.WithTimeout(ctx, BootTimeout)
	defer cancel()
	g, err := vmtest.Boot(bctx, cfg)
	if err != nil {
		return m, err
	}
	defer g.Close()
	c, err := g.Dial(bctx)
	if err != nil {
		return m, err
	}
	defer c.Close()
	if _, err := c.Agent.CreateSandbox(bctx, &pb.CreateSandboxRequest{SandboxId: "memory", Hostname: "memory"}); err != nil {
		return m, fmt.Errorf("CreateSandbox: %w", err)
	}
	const id = "idle"
	if _, err := c.Agent.CreateContainer(bctx, &pb.CreateContainerRequest{ContainerId: id, ExecId: id, OCI: vmtest.BusyboxSpec(ContainerRootfs, "/bin/sleep", "3600")}); err != nil {
		return m, fmt.Errorf("CreateContainer: %w", err)
	}
	if _, err := c.Agent.StartContainer(bctx, &pb.StartContainerRequest{ContainerId: id}); err != nil {
		return m, fmt.Errorf("StartContainer: %w", err)
	}
	time.Sleep(memSettle)
	// The container must still be there, idle: its process is alive.
	st, err := c.Agent.StatsContainer(bctx, &pb.StatsContainerRequest{ContainerId: id})
	if err != nil {
		return m, fmt.Errorf("StatsContainer: %w", err)
	}
	if n := st.GetCgroupStats().GetPidsStats().GetCurrent(); n != 1 {
		return m, fmt.Errorf("idle container has %d processes, want 1", n)
	}
	r, err := c.Agent.GetMetrics(bctx, &pb.GetMetricsRequest{})
	if err != nil {
		return m, fmt.Errorf("GetMetrics: %w", err)
	}
	return parseMemory(r.Metrics)
}

// parseMemory reads the figures out of the agent's Prometheus text.
func parseMemory(text string) (guestMemory, error) {
	var m guestMemory
	all, err := promtext.Parse(text)
	if err != nil {
		return m, err
	}
	info := map[string]float64{}
	for _, item := range metrics.MeminfoItems {
		v, ok := all[`keel_guest_meminfo_bytes{item="`+item+`"}`]
		if !ok {
			return m, fmt.Errorf("GetMetrics has no keel_guest_meminfo_bytes{item=%q}", item)
		}
		info[item] = v
	}
	m.AgentAnon = all["keel_agent_anon_memory_bytes"]
	if m.AgentAnon == 0 {
		return m, fmt.Errorf("GetMetrics has no keel_agent_anon_memory_bytes")
	}
	m.Total, m.Cached = info["MemTotal"], info["Cached"]
	m.Used = info["MemTotal"] - info["MemFree"] - info["Buffers"] - info["Cached"]
	if m.Used <= 0 || m.Used > m.Total {
		return m, fmt.Errorf("implausible meminfo %v", info)
	}
	return m, nil
}
