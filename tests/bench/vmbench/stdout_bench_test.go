package vmbench

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keelvm/keel/protocol/client"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/protocol/outputreader"
	"github.com/keelvm/keel/protocol/passfd"
	"github.com/keelvm/keel/tests/vmm/qemu"
	"github.com/keelvm/keel/tests/vmtest"
)

const (
	// streamBytes is what the container writes per benchmark op.
	streamBytes = 32 << 20
	// kataReadLen is the ReadStdout length Kata's shim asks for (its
	// io.CopyBuffer buffer, containerd-shim-v2 stream.go bufSize).
	kataReadLen = 32 << 10
	// passfdPort is Kata's default agent.passfd_listener_port.
	passfdPort = passfd.DefaultPort
	// rawPort is where the container's producer listens for the baseline.
	rawPort = 2000
	// streamTool is the producer inside the container rootfs.
	streamTool = "/vsockstream"
	// pattern is testdata/vsockstream's period.
	pattern = 251
)

// containerImages: one DAX image with keel-agent as init and a busybox
// container rootfs carrying the producer, built once per process.
var containerImages struct {
	once sync.Once
	img  string
}

func containerImage(b *testing.B, ctx context.Context) string {
	b.Helper()
	containerImages.once.Do(func() {
		dir := sharedDir(b)
		agent, err := vmtest.AgentBinary(ctx)
		if err != nil {
			b.Fatal(err)
		}
		tool := buildStatic(b, dir, "vsockstream")
		containerImages.img = daxImage(b, ctx, dir, agent, true, map[string]string{streamTool: tool})
	})
	if containerImages.img == "" {
		b.Fatal("the container image was not built (see the first failure)")
	}
	return containerImages.img
}

// StreamAppendEnv names extra kernel parameters for the stdout benchmarks'
// guest, to measure an agent knob (e.g. agent.container_pipe_size=1048576)
// against the same baseline.
const StreamAppendEnv = "KEEL_VMBENCH_STREAM_APPEND"

// streamGuest is the one guest the stdout benchmarks share (booted by the
// first of them, closed by TestMain).
var streamGuest struct {
	mu sync.Mutex
	g  *vmtest.Guest
	c  *client.Client
}

func streamVM(b *testing.B) (*vmtest.Guest, *client.Client) {
	b.Helper()
	streamGuest.mu.Lock()
	defer streamGuest.mu.Unlock()
	if streamGuest.g != nil {
		return streamGuest.g, streamGuest.c
	}
	ctx, cancel := context.WithTimeout(context.Background(), BootTimeout)
	defer cancel()
	kernel := keelKernel(b, ctx)
	img := containerImage(b, ctx)
	g, err := vmtest.Boot(ctx, vmtest.Config{
		Kernel: kernel, NoInitrd: true,
		Append: append(append(append([]string{}, daxRoot...), "agent.passfd_listener_port="+strconv.Itoa(passfdPort)),
			strings.Fields(os.Getenv(StreamAppendEnv))...),
		Pmem: []qemu.PmemDevice{{Path: img, Kind: qemu.VirtioPmem, ReadOnly: true}},
		QEMU: fastQEMU(),
	})
	if err != nil {
		b.Fatal(err)
	}
	c, err := g.Dial(ctx)
	if err != nil {
		g.Close()
		b.Fatal(err)
	}
	if _, err := c.Agent.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: "stream", Hostname: "stream"}); err != nil {
		c.Close()
		g.Close()
		b.Fatalf("CreateSandbox: %v", err)
	}
	streamGuest.g, streamGuest.c = g, c
	return g, c
}

func closeStreamGuest() {
	streamGuest.mu.Lock()
	defer streamGuest.mu.Unlock()
	if streamGuest.c != nil {
		streamGuest.c.Close()
	}
	if streamGuest.g != nil {
		streamGuest.g.Close()
	}
	streamGuest.g, streamGuest.c = nil, nil
}

// patternCheck is an io.Writer that checks every byte against the
// producer's pattern and counts them.
type patternCheck struct {
	n       int64
	first   time.Time
	onFirst func() // called at the first byte
}

func (p *patternCheck) Write(b []byte) (int, error) {
	if p.n == 0 && len(b) > 0 {
		p.first = time.Now()
		if p.onFirst != nil {
			p.onFirst()
		}
	}
	for i, c := range b {
		if c != byte((p.n+int64(i))%pattern) {
			return i, fmt.Errorf("byte %d is %d, want %d", p.n+int64(i), c, (p.n+int64(i))%pattern)
		}
	}
	p.n += int64(len(b))
	return len(b), nil
}

// transfer is one op's result.
type transfer struct {
	bytes int64
	took  time.Duration // first byte -> EOF
	cpu   cpuStat       // over the producer's writes
	qemu  float64       // QEMU's CPU seconds, first byte -> EOF
}

var streamSeq atomic.Int64

// BenchmarkStdoutVsock is the container stdout throughput of the guest,
// all over the same vhost-user vsock device from the same producer
// (testdata/vsockstream, 32 MiB in 64 KiB writes, every byte checked):
//
//   - raw: the container writes to an AF_VSOCK connection the host opened
//     to it (no agent on the path): the baseline.
//   - readstdout: stdout read with ReadStdout, 32 KiB per call as Kata's
//     shim reads.
//   - reader: the same requests from Keel's client stream reader
//     (protocol/outputreader) on a hybrid-vsock connection of its own,
//     read into a 32 KiB buffer as Kata's shim copies.
//   - passfd: stdout handed to a passfd stream (agent.passfd_listener_port).
//
// MB/s counts first byte to EOF; `make bench-vm` prints the ratios.
func BenchmarkStdoutVsock(b *testing.B) {
	needVM(b)
	for _, mode := range []string{"raw", "readstdout", "reader", "passfd"} {
		b.Run(mode, func(b *testing.B) {
			g, c := streamVM(b)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
			defer cancel()
			var total transfer
			for i := 0; i < b.N; i++ {
				t, err := streamOnce(ctx, g, c, mode)
				if err != nil {
					b.Fatal(err)
				}
				total.bytes += t.bytes
				total.took += t.took
			}
			b.ReportMetric(float64(total.bytes)/total.took.Seconds()/1e6, "MB/s")
			b.ReportMetric(loadAverage(), "load1")
		})
	}
}

// streamOnce runs one producer container and reads its output by mode.
func streamOnce(ctx context.Context, g *vmtest.Guest, c *client.Client, mode string) (_ transfer, err error) {
	id := fmt.Sprintf("stream-%s-%d", mode, streamSeq.Add(1))
	args := []string{streamTool, "-bytes", strconv.Itoa(streamBytes), "-cpustat"}
	if mode == "raw" {
		args = append(args, "-listen", strconv.Itoa(rawPort))
	}
	req := &pb.CreateContainerRequest{ContainerId: id, ExecId: id, OCI: vmtest.BusyboxSpec(ContainerRootfs, args...)}
	var stream io.ReadCloser
	if mode == "passfd" {
		conn, port, err := passfd.Dial(ctx, g.PortAddr(passfdPort))
		if err != nil {
			return transfer{}, fmt.Errorf("passfd dial: %w", err)
		}
		defer conn.Close()
		stream, req.StdoutPort = conn, port
	}
	if _, err := c.Agent.CreateContainer(ctx, req); err != nil {
		return transfer{}, fmt.Errorf("CreateContainer: %w", err)
	}
	defer func() {
		if _, e := c.Agent.RemoveContainer(context.WithoutCancel(ctx), &pb.RemoveContainerRequest{ContainerId: id}); e != nil && err == nil {
			err = fmt.Errorf("RemoveContainer: %w", e)
		}
	}()
	if _, err := c.Agent.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: id}); err != nil {
		return transfer{}, fmt.Errorf("StartContainer: %w", err)
	}
	if mode == "raw" {
		conn, err := client.DialConn(ctx, g.PortAddr(rawPort))
		if err != nil {
			return transfer{}, fmt.Errorf("dial the producer: %w", err)
		}
		defer conn.Close()
		stream = conn
	}
	qemuPid := g.VM.Pid()
	var qemuStart float64
	check := patternCheck{onFirst: func() { qemuStart = cpuSeconds(qemuPid) }}
	switch {
	case stream != nil:
		_, err = io.Copy(&check, stream)
	case mode == "reader":
		var r *outputreader.Reader
		if r, err = outputreader.Dial(ctx, g.AgentAddr(), outputreader.Stdout, id, id, outputreader.Options{}); err == nil {
			_, err = io.CopyBuffer(&check, r, make([]byte, kataReadLen))
			r.Close()
		}
	default:
		err = readStdout(ctx, c, id, &check)
	}
	end, qemuEnd := time.Now(), cpuSeconds(qemuPid)
	if err != nil {
		return transfer{}, fmt.Errorf("%s: reading: %w", mode, err)
	}
	if stream != nil {
		stream.Close() // lets the raw producer exit
	}
	w, err := c.Agent.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: id, ExecId: id})
	if err != nil {
		return transfer{}, fmt.Errorf("WaitProcess: %w", err)
	}
	stderr, err := readStderr(ctx, c, id)
	if err != nil {
		return transfer{}, fmt.Errorf("ReadStderr: %w", err)
	}
	if w.Status != 0 {
		return transfer{}, fmt.Errorf("producer exited %d: %s", w.Status, stderr)
	}
	if check.n != streamBytes {
		return transfer{}, fmt.Errorf("%s: got %d bytes, want %d", mode, check.n, streamBytes)
	}
	cpu, err := parseCPUStat(stderr)
	if err != nil {
		return transfer{}, err
	}
	return transfer{bytes: check.n, took: end.Sub(check.first), cpu: cpu, qemu: qemuEnd - qemuStart}, nil
}

// readStdout reads with ReadStdout, kataReadLen per call, until Kata's EOF
// (an empty answer).
func readStdout(ctx context.Context, c *client.Client, id string, w io.Writer) error {
	for {
		r, err := c.Agent.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: id, ExecId: id, Len: kataReadLen})
		if err != nil {
			return err
		}
		if len(r.Data) == 0 {
			return nil
		}
		if _, err := w.Write(r.Data); err != nil {
			return err
		}
	}
}
