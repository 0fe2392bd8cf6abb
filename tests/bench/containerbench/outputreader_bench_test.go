package containerbench

import (
	"context"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/containers"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/protocol/outputreader"
	"golang.org/x/sys/unix"
)

// BenchmarkStdoutReaderPath32KiB (P3, Keel's client): the same 64 MiB of
// dd output as BenchmarkStdoutRPCPath32KiB, from the same in-process agent
// on the kernel's default pipe, read 32 KiB at a time (as Kata's shim) by
// protocol/outputreader on a connection of its own instead of the
// generated ttrpc client. The connection is dialled with the timer
// stopped (once per stream, like the exec).
func BenchmarkStdoutReaderPath32KiB(b *testing.B) {
	a, addr, cid := readerAgent(b, false, "reader")
	benchStdoutReader(b, a, addr, cid)
}

// BenchmarkAgentStdoutReader32KiB (P3 wire, Keel's client): the same from
// the keel-agent binary in host mode with its GC policy (as
// BenchmarkAgentStdoutRPC32KiB/gc=policy).
func BenchmarkAgentStdoutReader32KiB(b *testing.B) {
	a, addr, cid := readerAgent(b, true, "reader")
	benchStdoutReader(b, a, addr, cid)
}

func benchStdoutReader(b *testing.B, a pb.AgentServiceService, addr, cid string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	if err := runContainer(ctx, a, cid, "/bin/sleep", "1000"); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 32<<10)
	b.SetBytes(stdoutBytes)
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		eid := fmt.Sprintf("dd%d", i)
		if _, err := a.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: cid, ExecId: eid, Process: pbProcess(append([]string{"/bin/" + ddArgs[0]}, ddArgs[1:]...)...)}); err != nil {
			b.Fatal(err)
		}
		r, err := outputreader.Dial(ctx, addr, outputreader.Stdout, cid, eid, outputreader.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		n, err := drainReader(r, buf)
		b.StopTimer()
		r.Close()
		if err != nil || n != stdoutBytes {
			b.Fatalf("outputreader: %d bytes, %v", n, err)
		}
		if w, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: cid, ExecId: eid}); err != nil || w.Status != 0 {
			b.Fatalf("WaitProcess: %v %v", w, err)
		}
		b.StartTimer()
	}
}

// drainReader reads r to its end through buf and returns how many bytes
// came (as drainStdout does for the generated client: the data dropped).
func drainReader(r io.Reader, buf []byte) (int, error) {
	total := 0
	for {
		n, err := r.Read(buf)
		total += n
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// BenchmarkStdoutReaderPaired32KiB (P3, Keel's client, paired): in every
// iteration and in turns, the raw copy with 1 MiB buffers, the raw copy
// with 32 KiB buffers, the generated client's ReadStdout path and
// protocol/outputreader, 32 KiB reads, the same dd output, in process and
// from the keel-agent binary. Reports the median per-iteration ratios of
// throughput: reader/raw (the P3 figure for Keel's client), reader/rpc
// (what the reader gains over the generated client), rpc/raw (the P3
// figure for the generated client, as BenchmarkStdoutRPCPaired32KiB) and
// reader/raw-32KiB. From the binary it also reports each client's CPU per
// MB (this process: the client alone) and the agent's, which load moves
// far less than wall time.
func BenchmarkStdoutReaderPaired32KiB(b *testing.B) {
	b.Run("inproc", func(b *testing.B) {
		r, _ := newRPC(b, containers.Options{ExecIOLinger: time.Nanosecond})
		c, addr := serveTTRPCAt(b, r)
		benchReaderPaired(b, c.Agent, addr, "out", 0)
	})
	b.Run("wire", func(b *testing.B) {
		id := fmt.Sprintf("paired-reader-%d", os.Getpid())
		ids := []string{id}
		a, pid, addr := startAgentBinAt(b, agentBinary(b), &ids)
		benchReaderPaired(b, a, addr, id, pid)
	})
}

func benchReaderPaired(b *testing.B, a pb.AgentServiceService, addr, cid string, agentPid int) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	if err := runContainer(ctx, a, cid, "/bin/sleep", "1000"); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 32<<10)
	exec := func(eid string) {
		if _, err := a.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: cid, ExecId: eid, Process: pbProcess(append([]string{"/bin/" + ddArgs[0]}, ddArgs[1:]...)...)}); err != nil {
			b.Fatal(err)
		}
	}
	wait := func(eid string) {
		if w, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: cid, ExecId: eid}); err != nil || w.Status != 0 {
			b.Fatalf("WaitProcess: %v %v", w, err)
		}
	}
	// CPU of this process (the client, from the binary) and of the agent
	// over each client's reads.
	var rpcCPU, readerCPU, rpcAgentCPU, readerAgentCPU time.Duration
	cpu := func() (self, agent time.Duration) {
		if agentPid == 0 {
			return 0, 0
		}
		var ru unix.Rusage
		if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), agentOwnCPU(b, agentPid)
	}
	rpc := func(i int) time.Duration {
		eid := fmt.Sprintf("rpc%d", i)
		exec(eid)
		c0, a0 := cpu()
		t0 := time.Now()
		n, err := drainStdout(ctx, a, cid, eid, 32<<10)
		d := time.Since(t0)
		c1, a1 := cpu()
		rpcCPU, rpcAgentCPU = rpcCPU+c1-c0, rpcAgentCPU+a1-a0
		if err != nil || n != stdoutBytes {
			b.Fatalf("ReadStdout: %d bytes, %v", n, err)
		}
		wait(eid)
		return d
	}
	reader := func(i int) time.Duration {
		eid := fmt.Sprintf("reader%d", i)
		exec(eid)
		r, err := outputreader.Dial(ctx, addr, outputreader.Stdout, cid, eid, outputreader.Options{})
		if err != nil {
			b.Fatal(err)
		}
		c0, a0 := cpu()
		t0 := time.Now()
		n, err := drainReader(r, buf)
		d := time.Since(t0)
		c1, a1 := cpu()
		readerCPU, readerAgentCPU = readerCPU+c1-c0, readerAgentCPU+a1-a0
		r.Close()
		if err != nil || n != stdoutBytes {
			b.Fatalf("outputreader: %d bytes, %v", n, err)
		}
		wait(eid)
		return d
	}
	var readerRaw, readerRPC, rpcRaw, readerRaw32 []float64
	b.SetBytes(stdoutBytes)
	for i := 0; b.Loop(); i++ {
		var raw, raw32, g, rd time.Duration
		// Take turns in a rotating order, so no path always runs first.
		for k := range 4 {
			switch (i + k) % 4 {
			case 0:
				raw = rawCopy(b, 1<<20)
			case 1:
				raw32 = rawCopy(b, 32<<10)
			case 2:
				g = rpc(i)
			case 3:
				rd = reader(i)
			}
		}
		readerRaw = append(readerRaw, float64(raw)/float64(rd))
		readerRPC = append(readerRPC, float64(g)/float64(rd))
		rpcRaw = append(rpcRaw, float64(raw)/float64(g))
		readerRaw32 = append(readerRaw32, float64(raw32)/float64(rd))
	}
	b.ReportMetric(median(readerRaw), "reader/raw")
	b.ReportMetric(median(readerRPC), "reader/rpc")
	b.ReportMetric(median(rpcRaw), "rpc/raw")
	b.ReportMetric(median(readerRaw32), "reader/raw-32KiB")
	if agentPid != 0 {
		mb := float64(b.N * (stdoutBytes >> 20))
		b.ReportMetric(ms(readerCPU)/mb, "reader-client-cpu-ms/MB")
		b.ReportMetric(ms(rpcCPU)/mb, "rpc-client-cpu-ms/MB")
		b.ReportMetric(ms(readerAgentCPU)/mb, "reader-agent-cpu-ms/MB")
		b.ReportMetric(ms(rpcAgentCPU)/mb, "rpc-agent-cpu-ms/MB")
	}
}
