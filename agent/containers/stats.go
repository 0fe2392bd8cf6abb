package containers

import (
	"github.com/keelvm/keel/agent/container"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/opencontainers/cgroups"
)

func statsToPB(st *container.Stats) *pb.StatsContainerResponse {
	out := &pb.StatsContainerResponse{}
	for _, n := range st.Network {
		out.NetworkStats = append(out.NetworkStats, &pb.NetworkStats{Name: n.Name,
			RxBytes: n.RxBytes, RxPackets: n.RxPackets, RxErrors: n.RxErrors, RxDropped: n.RxDropped,
			TxBytes: n.TxBytes, TxPackets: n.TxPackets, TxErrors: n.TxErrors, TxDropped: n.TxDropped})
	}
	cg := st.Cgroup
	if cg == nil {
		return out
	}
	mem := func(d cgroups.MemoryData) *pb.MemoryData {
		return &pb.MemoryData{Usage: d.Usage, MaxUsage: d.MaxUsage, Failcnt: d.Failcnt, Limit: d.Limit}
	}
	blk := func(in []cgroups.BlkioStatEntry) []*pb.BlkioStatsEntry {
		var o []*pb.BlkioStatsEntry
		for _, e := range in {
			o = append(o, &pb.BlkioStatsEntry{Major: e.Major, Minor: e.Minor, Op: e.Op, Value: e.Value})
		}
		return o
	}
	out.CgroupStats = &pb.CgroupStats{
		CpuStats: &pb.CpuStats{
			CpuUsage: &pb.CpuUsage{TotalUsage: cg.CpuStats.CpuUsage.TotalUsage, PercpuUsage: cg.CpuStats.CpuUsage.PercpuUsage,
				UsageInKernelmode: cg.CpuStats.CpuUsage.UsageInKernelmode, UsageInUsermode: cg.CpuStats.CpuUsage.UsageInUsermode},
			ThrottlingData: &pb.ThrottlingData{Periods: cg.CpuStats.ThrottlingData.Periods,
				ThrottledPeriods: cg.CpuStats.ThrottlingData.ThrottledPeriods, ThrottledTime: cg.CpuStats.ThrottlingData.ThrottledTime},
		},
		MemoryStats: &pb.MemoryStats{Cache: cg.MemoryStats.Cache, Usage: mem(cg.MemoryStats.Usage),
			SwapUsage: mem(cg.MemoryStats.SwapUsage), KernelUsage: mem(cg.MemoryStats.KernelUsage),
			UseHierarchy: cg.MemoryStats.UseHierarchy, Stats: cg.MemoryStats.Stats},
		PidsStats: &pb.PidsStats{Current: cg.PidsStats.Current, Limit: cg.PidsStats.Limit},
		BlkioStats: &pb.BlkioStats{
			IoServiceBytesRecursive: blk(cg.BlkioStats.IoServiceBytesRecursive),
			IoServicedRecursive:     blk(cg.BlkioStats.IoServicedRecursive),
			IoQueuedRecursive:       blk(cg.BlkioStats.IoQueuedRecursive),
			IoServiceTimeRecursive:  blk(cg.BlkioStats.IoServiceTimeRecursive),
			IoWaitTimeRecursive:     blk(cg.BlkioStats.IoWaitTimeRecursive),
			IoMergedRecursive:       blk(cg.BlkioStats.IoMergedRecursive),
			IoTimeRecursive:         blk(cg.BlkioStats.IoTimeRecursive),
			SectorsRecursive:        blk(cg.BlkioStats.SectorsRecursive),
		},
		HugetlbStats: map[string]*pb.HugetlbStats{},
	}
	for k, h := range cg.HugetlbStats {
		out.CgroupStats.HugetlbStats[k] = &pb.HugetlbStats{Usage: h.Usage, MaxUsage: h.MaxUsage, Failcnt: h.Failcnt}
	}
	return out
}
