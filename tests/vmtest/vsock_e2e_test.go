package vmtest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keelvm/keel/protocol/client"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/vmm/vsockdev"
)

// End-to-end tests of the agent over the userspace vhost-user-vsock device.
// One guest is booted and shared by every subtest (each TCG boot costs
// several seconds); the last subtest kills it.
const (
	// logVPort and passfdPort are Kata's agent.log_vport and
	// agent.passfd_listener_port defaults as the runtime passes them.
	logVPort   = 1025
	passfdPort = 1027
	// bigStdoutSize goes through a container's stdout on each path.
	bigStdoutSize = 100 << 20
	// parallelConns clients run parallelRounds rounds of RPCs each.
	parallelConns  = 20
	parallelRounds = 10
	// maxListenToConnect bounds the time from the agent listening to the
	// host (dialing since QEMU started) being connected: the client's
	// backoff is capped at 100 ms, far from Kata runtime#1917's 2 s stall.
	maxListenToConnect = time.Second
)

func TestVsockE2E(t *testing.T) {
	if why := Available(); why != "" {
		t.Skip(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	t.Cleanup(cancel)

	g, err := Boot(ctx, Config{
		Busybox:    true,
		DeferStart: true,
		MemoryMiB:  768,
		// GOGC and GOMEMLIMIT: words the kernel passes to init's
		// environment (GCFromCmdline); 200 is the policy's own value, so
		// the stdout figures below are those of the default policy.
		Append: []string{fmt.Sprintf("agent.log_vport=%d", logVPort), fmt.Sprintf("agent.passfd_listener_port=%d", passfdPort),
			"GOGC=200", "GOMEMLIMIT=512MiB"},
		Log: testWriter{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })

	// The host dials at once, long before the agent listens: the device
	// holds or refuses each CONNECT until then and the client retries.
	dctx, dcancel := context.WithTimeout(ctx, 3*time.Minute)
	go func() {
		select {
		case <-g.VM.Done():
			dcancel()
		case <-dctx.Done():
		}
	}()
	c, err := g.Dial(dctx)
	connected := time.Now()
	attempts := g.Device.Stats().ConnsOpened // every CONNECT the device saw
	dcancel()
	if err != nil {
		t.Fatalf("%v\nserial console (tail):\n%s", err, tail(g.VM.SerialLog(), 40))
	}
	t.Cleanup(func() { c.Close() })
	t.Logf("host dialing since QEMU start: connected %.2fs after QEMU started", connected.Sub(g.Booted).Seconds())

	t.Run("ConnectBeforeListen", func(t *testing.T) { testConnectBeforeListen(ctx, t, g, c, connected, attempts) })
	t.Run("Health", func(t *testing.T) { testHealth(ctx, t, c) })
	t.Run("GCFromCmdline", func(t *testing.T) { gcFromCmdline(ctx, t, c.Agent, 200, 512<<20) })
	t.Run("LogVPort", func(t *testing.T) { testLogVPort(ctx, t, g, c) })
	t.Run("ParallelConnections", func(t *testing.T) { testParallelConnections(ctx, t, g) })

	if _, err := c.Agent.CreateSandbox(ctx, &pb.CreateSandboxRequest{Hostname: "keel-e2e", SandboxId: "e2e"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	// Both runs send the same file, made (and hashed) once: random bytes
	// and sha256sum cost the TCG guest more than the transfer itself.
	var rpcRate, passfdRate float64
	t.Run("StdoutRPC", func(t *testing.T) {
		rpcRate = testBigStdout(ctx, t, g.Device, c, "big-rpc", bigFileScript("/tmp/big", bigStdoutSize, false), "")
	})
	t.Run("StdoutPassFD", func(t *testing.T) {
		passfdRate = testBigStdout(ctx, t, g.Device, c, "big-passfd", bigFileScript("/tmp/big", bigStdoutSize, true), g.PortAddr(passfdPort))
	})
	if rpcRate > 0 && passfdRate > 0 {
		t.Logf("stdout %d MiB: ReadStdout %.1f MB/s, passfd %.1f MB/s (%.1fx)", bigStdoutSize>>20, rpcRate, passfdRate, passfdRate/rpcRate)
	}

	t.Run("KilledQEMULeavesNothing", func(t *testing.T) { testKilledQEMU(t, g) })
}

// testConnectBeforeListen compares the agent's "listening" log time (guest
// clock, from the emulated RTC) with the host's connect time, after
// measuring the offset between the two clocks with a bracketed RPC.
func testConnectBeforeListen(ctx context.Context, t *testing.T, g *Guest, c *client.Client, connected time.Time, attempts uint64) {
	if attempts < 2 {
		t.Fatalf("the first CONNECT succeeded (%d attempts): the host did not dial before the agent listened", attempts)
	}
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	listening, err := waitLogRecord(lctx, g, 0, func(r logRecord) bool { return r.Msg == "listening" })
	if err != nil {
		t.Fatal(err)
	}
	lo, hi, err := clockOffset(ctx, g, c)
	if err != nil {
		t.Fatal(err)
	}
	// Host time of "listening" is in [listening-hi, listening-lo].
	gapMax := connected.Sub(listening.Time.Add(-hi))
	gapMin := connected.Sub(listening.Time.Add(-lo))
	t.Logf("%d CONNECTs until accepted; guest clock - host clock in [%v, %v]; agent listening -> host connected: %v .. %v",
		attempts, lo.Round(time.Millisecond), hi.Round(time.Millisecond), gapMin.Round(time.Millisecond), gapMax.Round(time.Millisecond))
	if hi-lo > 500*time.Millisecond {
		t.Fatalf("clock offset measurement too loose (%v): the bracketing RPC took too long", hi-lo)
	}
	if gapMax > maxListenToConnect {
		t.Errorf("host connected up to %v after the agent listened (want < %v): a late-listener stall", gapMax, maxListenToConnect)
	}
	// The "listening" record is written after listen(2), so a connection
	// can only precede it by a little; much earlier means the clock
	// comparison is wrong and the bound above meaningless.
	if gapMin < -500*time.Millisecond {
		t.Errorf("host connected %v before the agent logged listening: clock comparison broken", -gapMin)
	}
}

func testHealth(ctx context.Context, t *testing.T, c *client.Client) {
	h, err := c.Health.Check(ctx, &pb.CheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if h.Status != pb.HealthCheckResponse_SERVING {
		t.Errorf("Health.Check status %v, want SERVING", h.Status)
	}
	d, err := c.Agent.GetGuestDetails(ctx, &pb.GuestDetailsRequest{MemBlockSize: true})
	if err != nil {
		t.Fatal(err)
	}
	if !d.GetAgentDetails().GetInitDaemon() {
		t.Errorf("agent is not PID 1: %v", d.AgentDetails)
	}
	ready, ok := guestFeature(d, "keel.boot.listener_ready")
	if !ok {
		t.Fatalf("no keel.boot.listener_ready in %v", d.GetAgentDetails().GetExtraFeatures())
	}
	initStart, _ := guestFeature(d, "keel.boot.init_start")
	t.Logf("guest uptime: init_start %.2fs, listener_ready %.2fs", initStart, ready)
	if ready <= 0 || ready < initStart {
		t.Errorf("listener_ready %.3f s before init_start %.3f s", ready, initStart)
	}
}

// testLogVPort reads the agent's log stream (the agent listens on
// agent.log_vport, Kata style) and looks for the record of an RPC made
// after connecting, named by a unique container id.
func testLogVPort(ctx context.Context, t *testing.T, g *Guest, c *client.Client) {
	// The agent opened this listener during boot, before its ttrpc one:
	// no retrying for long.
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := client.DialConn(dctx, g.PortAddr(logVPort))
	cancel()
	if err != nil {
		t.Fatalf("%v\nagent log about the stream: %v", err, grepLog(g, "log stream"))
	}
	probe := fmt.Sprintf("log-probe-%d", time.Now().UnixNano())
	type line struct {
		rec map[string]any
		raw string
	}
	lines := make(chan line, 1024)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer func() {
		close(stop)
		conn.Close() // ends the reader's Scan
		wg.Wait()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(lines)
		sc := bufio.NewScanner(conn)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				m = nil
			}
			select {
			case lines <- line{m, sc.Text()}:
			case <-stop:
				return
			}
		}
	}()

	// Fails with NotFound; the agent logs "rpc failed" naming the id.
	if _, err := c.Agent.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: probe, ExecId: probe}); err == nil {
		t.Fatalf("WaitProcess on unknown container %s succeeded", probe)
	}
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	var n int
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("log stream ended after %d lines without the probe", n)
			}
			n++
			if l.rec == nil {
				t.Errorf("log line is not JSON: %q", l.raw)
				continue
			}
			if l.rec["method"] == "/grpc.AgentService/WaitProcess" && strings.Contains(l.raw, probe) {
				if _, ok := l.rec["time"].(string); !ok {
					t.Errorf("record without time: %s", l.raw)
				}
				t.Logf("log stream: %d JSON lines up to the probe's record: %s", n, l.raw)
				return
			}
		case <-timeout.C:
			t.Fatalf("no log record for WaitProcess(%s) within 30s (%d lines read)", probe, n)
		}
	}
}

// testParallelConnections holds parallelConns agent connections open at
// once (all dialled before any RPC), runs the rounds on each concurrently,
// and checks that the device releases every connection after Close.
func testParallelConnections(ctx context.Context, t *testing.T, g *Guest) {
	// Only the shared client is connected now; connections of earlier
	// subtests may still be shutting down.
	if base := waitConnsAtMost(g.Device, 1, 20*time.Second); base > 1 {
		t.Errorf("device has %d connections before the test, want 1 (the shared client): earlier ones not released", base)
	}
	base := g.Device.Stats().ConnsActive
	start := time.Now()
	var (
		dialled, wg sync.WaitGroup
		allDialled  = make(chan struct{})
		errs        = make(chan error, parallelConns)
	)
	dialled.Add(parallelConns)
	for i := range parallelConns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- func() error {
				c, err := client.Dial(ctx, g.AgentAddr())
				dialled.Done()
				if err != nil {
					return fmt.Errorf("conn %d: %w", i, err)
				}
				defer c.Close()
				<-allDialled
				for r := range parallelRounds {
					if h, err := c.Health.Check(ctx, &pb.CheckRequest{}); err != nil || h.Status != pb.HealthCheckResponse_SERVING {
						return fmt.Errorf("conn %d round %d: Health.Check: %v %v", i, r, h, err)
					}
					d, err := c.Agent.GetGuestDetails(ctx, &pb.GuestDetailsRequest{})
					if err != nil {
						return fmt.Errorf("conn %d round %d: GetGuestDetails: %w", i, r, err)
					}
					if !d.GetAgentDetails().GetInitDaemon() {
						return fmt.Errorf("conn %d round %d: GetGuestDetails: %v", i, r, d)
					}
				}
				return nil
			}()
		}()
	}
	dialled.Wait()
	dialTime := time.Since(start)
	if active := g.Device.Stats().ConnsActive; active < base+parallelConns {
		t.Errorf("device has %d connections with all %d clients dialled (%d before)", active, parallelConns, base)
	}
	close(allDialled)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	d := time.Since(start)
	t.Logf("%d connections (dialled in %.2fs) x %d rounds of Health.Check + GetGuestDetails: %.2fs in all",
		parallelConns, dialTime.Seconds(), parallelRounds, d.Seconds())

	// Closed connections are shut down with the guest and then forgotten.
	if active := waitConnsAtMost(g.Device, base, 20*time.Second); active > base {
		t.Errorf("device still has %d connections 20s after the clients closed (%d before)", active, base)
	}
}

// testBigStdout runs script in a container and checks that stdout carried
// exactly bigStdoutSize bytes whose sha256 is the one sha256sum printed
// on the container's stderr.
func testBigStdout(ctx context.Context, t *testing.T, dev *vsockdev.Device, c *client.Client, id, script, passfdAddr string) float64 {
	start := time.Now()
	before := dev.Stats()
	res, err := runBigStdout(ctx, c, id, script, passfdAddr)
	if err != nil {
		t.Fatal(err)
	}
	after := dev.Stats()
	through := after.BytesFromGuest - before.BytesFromGuest
	packets := after.PacketsFromGuest - before.PacketsFromGuest
	if through < bigStdoutSize {
		t.Errorf("only %d bytes went guest->host through the vsock device, want >= %d", through, bigStdoutSize)
	}
	if res.ExitCode != 0 {
		t.Errorf("container exited %d; stderr %q", res.ExitCode, res.Stderr)
	}
	if res.Bytes != bigStdoutSize {
		t.Errorf("received %d bytes, want %d", res.Bytes, bigStdoutSize)
	}
	guestSum := ""
	if f := strings.Fields(res.Stderr); len(f) > 0 {
		guestSum = f[0]
	}
	if len(guestSum) != 64 || guestSum != res.HostSum {
		t.Errorf("sha256: guest %q, host %s (stderr %q)", guestSum, res.HostSum, res.Stderr)
	}
	if res.Bytes == 0 {
		return 0
	}
	t.Logf("%d MiB in %.2fs: %.1f MB/s (in the container before the first byte: %.1fs; whole run %.1fs); %d guest packets, %.1f KiB payload on average",
		res.Bytes>>20, res.Transfer.Seconds(), res.MBps(), res.Prep.Seconds(), time.Since(start).Seconds(), packets, float64(through)/float64(max(packets, 1))/1024)
	return res.MBps()
}

// testKilledQEMU SIGKILLs QEMU under the harness and checks that Close
// still leaves no process, socket or directory behind.
func testKilledQEMU(t *testing.T, g *Guest) {
	pid := g.VM.Pid()
	started := procStartTime(pid)
	if started == "" {
		t.Fatalf("QEMU pid %d not running before the kill", pid)
	}
	socks, _ := filepath.Glob(filepath.Join(g.Dir, "*.sock*"))
	for _, want := range []string{g.UDS, filepath.Join(g.Dir, "vhost-user-vsock.sock")} {
		if !slices.Contains(socks, want) {
			t.Errorf("socket %s missing before the kill (have %v)", want, socks)
		}
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.VM.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("QEMU not reaped 30s after SIGKILL")
	}
	if err := g.Close(); err != nil {
		t.Logf("Close after SIGKILL: %v", err)
	}
	if st := procStartTime(pid); st == started {
		t.Errorf("QEMU pid %d still exists after Close", pid)
	}
	kids, err := qemuChildren()
	if err != nil {
		t.Fatal(err)
	}
	if len(kids) > 0 {
		t.Errorf("qemu children of the test process remain: %v", kids)
	}
	for _, p := range append(socks, g.UDS) {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after Close (%v)", p, err)
		}
	}
	if os.Getenv("KEEL_VM_KEEP") == "" {
		if _, err := os.Lstat(g.Dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("guest dir %s still exists after Close (%v)", g.Dir, err)
		}
	}
}

// waitConnsAtMost waits up to timeout for the device to hold at most n
// connections and returns the count it last saw.
func waitConnsAtMost(dev *vsockdev.Device, n uint64, timeout time.Duration) uint64 {
	deadline := time.Now().Add(timeout)
	for {
		active := dev.Stats().ConnsActive
		if active <= n || time.Now().After(deadline) {
			return active
		}
		time.Sleep(50 * time.Millisecond)
	}
}
