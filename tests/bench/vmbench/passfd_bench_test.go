package vmbench

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keelvm/keel/protocol/client"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/vmtest"
)

// BenchmarkStdoutVsockPaired times the passfd stdout path and its raw
// AF_VSOCK baseline alternately in the same guest (BenchmarkStdoutVsock
// runs all raw ops, then all passfd ops: on a shared machine the load moves
// in between), and says where the guest's CPU goes. Every op is streamOnce:
// the same producer container, 32 MiB in 64 KiB writes, the same host
// reader (io.Copy, 32 KiB reads), over the same vhost-user vsock device.
//
// The producer reads the guest's /proc/stat and its own rusage around its
// writes (-cpustat), so per mode the benchmark reports the guest CPU per
// MB, how busy the one vCPU was, and the producer's share; the rest of the
// busy time is the agent (passfd) or the kernel's vsock transmit work
// outside the producer's syscalls. The producer's window ends at its last
// write, not when the host has read everything: in passfd mode up to a
// pipe's worth (AttachPipeSize, 1 MiB of the 32 MiB) may still be in the
// pipe for the agent to splice, so the guest figures undercount passfd's
// tail (by at most ~3%); in raw mode only the socket's buffer is left.
// Beside them, per MB: QEMU's CPU from the first byte to EOF (what emulating the guest's work cost the host:
// unlike the guest's own clock, host load barely moves it) and, over whole
// ops, this process's (the vsock device, the reader). A guest busy ~100% is CPU-bound: the
// ratio is then the ratio of the guest CPU each path needs per byte. Idle
// time means the wait is elsewhere (the host's vsock device, the reader).
func BenchmarkStdoutVsockPaired(b *testing.B) {
	needVM(b)
	g, c := streamVM(b)
	modes := []string{"raw", "passfd"}
	tot, hostCPU := streamInTurns(b, g, c, modes)
	mbps := func(m int) float64 { return float64(tot[m].bytes) / tot[m].took.Seconds() / 1e6 }
	b.ReportMetric(mbps(1)/mbps(0), "passfd/raw")
	for m, name := range modes {
		mb := float64(tot[m].bytes) / 1e6
		cpu := tot[m].cpu
		b.ReportMetric(mbps(m), name+"-MB/s")
		b.ReportMetric(ms(cpu.busy)/mb, name+"-guest-cpu-ms/MB")
		b.ReportMetric(ms(cpu.self)/mb, name+"-producer-cpu-ms/MB")
		b.ReportMetric(100*float64(cpu.busy)/float64(max(1, cpu.busy+cpu.idle)), name+"-busy-%")
		b.ReportMetric(tot[m].qemu*1e3/mb, name+"-qemu-cpu-ms/MB")
		b.ReportMetric(hostCPU[m]*1e3/mb, name+"-host-cpu-ms/MB")
	}
	b.ReportMetric(loadAverage(), "load1")
}

// selfCPUSeconds is this process's user+system CPU time: the vsock device
// (tests/vmm/vsockdev runs in it), the reader checking every byte, the
// ttrpc client.
func selfCPUSeconds() float64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// cpuStat is what the producer measured over its writes (-cpustat): from
// its first write to its last, not to the host's EOF (see
// BenchmarkStdoutVsockPaired).
type cpuStat struct {
	busy, idle time.Duration // the guest's, from /proc/stat (10 ms ticks)
	self       time.Duration // the producer's own user + system time
}

var cpuStatLine = regexp.MustCompile(`(?m)^cpustat busy=(\d+) idle=(\d+) self=(\d+)$`)

// parseCPUStat finds the producer's "cpustat busy=µs idle=µs self=µs" line.
func parseCPUStat(stderr string) (cpuStat, error) {
	m := cpuStatLine.FindStringSubmatch(stderr)
	if m == nil {
		return cpuStat{}, fmt.Errorf("no cpustat line in the producer's stderr %q", stderr)
	}
	var v [3]time.Duration
	for i := range v {
		n, err := strconv.ParseInt(m[i+1], 10, 64)
		if err != nil {
			return cpuStat{}, fmt.Errorf("cpustat %q: %w", m[0], err)
		}
		v[i] = time.Duration(n) * time.Microsecond
	}
	return cpuStat{busy: v[0], idle: v[1], self: v[2]}, nil
}

// readStderr reads the exited producer's stderr to EOF.
func readStderr(ctx context.Context, c *client.Client, id string) (string, error) {
	var b strings.Builder
	for {
		r, err := c.Agent.ReadStderr(ctx, &pb.ReadStreamRequest{ContainerId: id, ExecId: id, Len: 64 << 10})
		if err != nil {
			return b.String(), err
		}
		if len(r.Data) == 0 {
			return b.String(), nil
		}
		b.Write(r.Data)
		if b.Len() > 1<<20 {
			return b.String(), fmt.Errorf("more than 1 MiB of stderr")
		}
	}
}

func TestParseCPUStat(t *testing.T) {
	got, err := parseCPUStat("listening 2000\ncpustat busy=1230000 idle=40000 self=900000\n")
	if err != nil {
		t.Fatal(err)
	}
	want := cpuStat{busy: 1230 * time.Millisecond, idle: 40 * time.Millisecond, self: 900 * time.Millisecond}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if _, err := parseCPUStat("vsockstream: write at 0: broken pipe\n"); err == nil {
		t.Fatal("a stderr without cpustat parsed")
	}
}

// streamInTurns runs streamOnce for every mode in each iteration, the order
// rotating from one iteration to the next so load that drifts weighs on all
// modes alike, and returns per mode the summed transfers and this process's
// CPU seconds (the vsock device and the reader) over whole ops.
func streamInTurns(b *testing.B, g *vmtest.Guest, c *client.Client, modes []string) (tot []transfer, hostCPU []float64) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	tot, hostCPU = make([]transfer, len(modes)), make([]float64, len(modes))
	i := 0
	for b.Loop() {
		for k := range modes {
			m := (k + i) % len(modes)
			h0 := selfCPUSeconds()
			t, err := streamOnce(ctx, g, c, modes[m])
			if err != nil {
				b.Fatal(err)
			}
			hostCPU[m] += selfCPUSeconds() - h0
			tot[m].bytes += t.bytes
			tot[m].took += t.took
			tot[m].qemu += t.qemu
			tot[m].cpu.busy += t.cpu.busy
			tot[m].cpu.idle += t.cpu.idle
			tot[m].cpu.self += t.cpu.self
		}
		i++
	}
	return tot, hostCPU
}
