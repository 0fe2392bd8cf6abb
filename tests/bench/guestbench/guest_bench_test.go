package guestbench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keelvm/keel/init/cmdline"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/vmtest"
)

// One guest serves every benchmark of a run (booted by the first, powered
// off by TestMain): under TCG a boot costs tens of seconds.
var (
	guestOnce sync.Once
	guest     *Guest
	guestErr  error
	guestDir  string
)

// benchGuest skips unless KEEL_BENCH_VM=1 and returns the shared guest.
func benchGuest(b *testing.B) *Guest {
	b.Helper()
	if os.Getenv("KEEL_BENCH_VM") != "1" {
		b.Skip("VM tier: set KEEL_BENCH_VM=1 (make bench-vm)")
	}
	if why := vmtest.Available(); why != "" {
		b.Skip(why)
	}
	guestOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		if guestDir, guestErr = os.MkdirTemp("", "keel-guestbench-"); guestErr != nil {
			return
		}
		guest, guestErr = Boot(ctx, guestDir, nil)
		if guestErr != nil {
			return
		}
		fmt.Fprintf(os.Stderr, "guestbench: image built in %v, guest booted in %v; host load average %s\n",
			guest.BuildTime.Round(time.Second), guest.BootTime.Round(100*time.Millisecond), loadAvg())
		guestErr = warmUp(ctx, guest)
	})
	if guestErr != nil {
		b.Fatal(guestErr)
	}
	return guest
}

// warmUp runs each kind of container once before anything is timed: the
// first run of each binary in a fresh guest pays page faults on the DAX
// image, the first cgroup creation and so on, which no later run does.
//
// It also checks that the agent mounted cgroup2 as init's default says.
func warmUp(ctx context.Context, g *Guest) error {
	opts, err := g.RemountCgroup2(ctx, "")
	if err != nil {
		return err
	}
	if HasOption(opts, "favordynmods") != cmdline.DefaultCgroupFavorDynmods || !HasOption(opts, "nsdelegate") {
		return fmt.Errorf("the guest's cgroup2 is mounted with %s; agent.cgroup_favordynmods defaults to %v", opts, cmdline.DefaultCgroupFavorDynmods)
	}
	if err := lifecycleTrue(ctx, g.Client.Agent, nextID("warm")); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	for _, rt := range []string{"runc", "crun"} {
		for _, op := range []string{"run", "exec"} {
			if _, out, err := g.RunScript(ctx, BenchDir, rt, op, "1"); err != nil {
				return fmt.Errorf("warm-up %s %s: %w\n%s", rt, op, err, out)
			}
		}
	}
	return nil
}

// loadAvg is the host's 1, 5 and 15 minute load average, for the record:
// the ratios are only comparable between runs at similar load.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

func TestMain(m *testing.M) {
	code := m.Run()
	if guest != nil {
		fmt.Fprintf(os.Stderr, "guestbench: host load average at the end %s\n", loadAvg())
		guest.Close()
	}
	if guestDir != "" {
		os.RemoveAll(guestDir)
	}
	os.Exit(code)
}

func benchCtx(b *testing.B) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	b.Cleanup(cancel)
	return ctx
}

// lifecycleTrue and lifecyclePhases run LifecyclePhases on Rootfs.
func lifecycleTrue(ctx context.Context, a pb.AgentServiceService, id string) error {
	_, err := lifecyclePhases(ctx, a, id)
	return err
}

func lifecyclePhases(ctx context.Context, a pb.AgentServiceService, id string) ([NPhases]time.Duration, error) {
	return LifecyclePhases(ctx, a, Rootfs, id)
}

const nPhases = NPhases

var phaseUnits = PhaseUnits

// medianMs is the median of d in milliseconds.
func medianMs(d []time.Duration) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[len(s)/2]) / float64(time.Millisecond)
}

func drain(ctx context.Context, a pb.AgentServiceService, cid, eid string) error {
	return Drain(ctx, a, cid, eid)
}

var seq int

func nextID(prefix string) string {
	seq++
	return prefix + "-" + strconv.Itoa(seq)
}

// BenchmarkGuestLifecycle (P1 in the guest): create+start+wait+remove of
// /bin/true through keel-agent (PID 1) over AF_VSOCK from the host, timed
// on the host, RPC round trips included. It also reports the median of each
// phase (create-ms, start-ms, run-ms, remove-ms).
func BenchmarkGuestLifecycle(b *testing.B) {
	g := benchGuest(b)
	ctx := benchCtx(b)
	var phases [nPhases][]time.Duration
	for b.Loop() {
		ph, err := lifecyclePhases(ctx, g.Client.Agent, nextID("p1"))
		if err != nil {
			b.Fatal(err)
		}
		for i := range ph {
			phases[i] = append(phases[i], ph[i])
		}
	}
	// Each phase's median, to show where a change gained.
	for i := range phases {
		b.ReportMetric(medianMs(phases[i]), phaseUnits[i])
	}
}

// inGuest runs b.N iterations of OP with rt inside the guest (bench.sh,
// timed there) and reports that time as ns/op.
func inGuest(b *testing.B, rt, op string) {
	g := benchGuest(b)
	r, out, err := g.RunScript(benchCtx(b), BenchDir, rt, op, strconv.Itoa(b.N))
	if err != nil {
		b.Fatalf("%v\n%s", err, out)
	}
	if r.Runtime != rt || r.Op != op || r.N != b.N {
		b.Fatalf("bench.sh answered %+v for %s %s %d", r, rt, op, b.N)
	}
	b.ReportMetric(float64(r.NsPerOp), "ns/op")
}

// BenchmarkGuestRuncRun (P1 baseline): `runc run` of the same bundle inside
// the guest, Debian 12's runc, state on the guest's tmpfs /run.
func BenchmarkGuestRuncRun(b *testing.B) { inGuest(b, "runc", "run") }

// BenchmarkGuestCrunRun: `crun run`, as BenchmarkGuestRuncRun.
func BenchmarkGuestCrunRun(b *testing.B) { inGuest(b, "crun", "run") }

// BenchmarkGuestExec (P2 in the guest): exec of /bin/true in a running
// container through the agent over AF_VSOCK: ExecProcess, ReadStdout until
// EOF, WaitProcess.
func BenchmarkGuestExec(b *testing.B) {
	g := benchGuest(b)
	ctx := benchCtx(b)
	id := startSleeper(b, ctx, g)
	proc := Spec(Rootfs, "/bin/true").Process
	for i := 0; b.Loop(); i++ {
		if err := execTrue(ctx, g.Client.Agent, id, "x"+strconv.Itoa(i), proc); err != nil {
			b.Fatal(err)
		}
	}
}

// startSleeper starts a container running sleep through the agent, killed
// and removed when b ends, and returns its id.
func startSleeper(b *testing.B, ctx context.Context, g *Guest) string {
	a := g.Client.Agent
	id := nextID("sleeper")
	if _, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: id, ExecId: id, OCI: Spec(Rootfs, "/bin/sleep", "100000")}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if _, err := a.SignalProcess(ctx, &pb.SignalProcessRequest{ContainerId: id, Signal: 9}); err != nil {
			b.Errorf("SignalProcess: %v", err)
		}
		if _, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: id, ExecId: id}); err != nil {
			b.Errorf("WaitProcess: %v", err)
		}
		if _, err := a.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: id}); err != nil {
			b.Errorf("RemoveContainer: %v", err)
		}
	})
	if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: id}); err != nil {
		b.Fatal(err)
	}
	return id
}

// execTrue is ExecProcess of /bin/true, ReadStdout until EOF, WaitProcess.
func execTrue(ctx context.Context, a pb.AgentServiceService, id, eid string, proc *pb.Process) error {
	if _, err := a.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: id, ExecId: eid, Process: proc}); err != nil {
		return fmt.Errorf("ExecProcess: %w", err)
	}
	if err := drain(ctx, a, id, eid); err != nil {
		return err
	}
	w, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: id, ExecId: eid})
	if err != nil {
		return fmt.Errorf("WaitProcess: %w", err)
	}
	if w.Status != 0 {
		return fmt.Errorf("exec /bin/true: status %d", w.Status)
	}
	return nil
}

// BenchmarkGuestRuncExec (P2 baseline): `runc exec` of /bin/true in a
// container `runc run -d` started from the same spec, inside the guest.
func BenchmarkGuestRuncExec(b *testing.B) { inGuest(b, "runc", "exec") }

// BenchmarkGuestCrunExec: `crun exec`, as BenchmarkGuestRuncExec.
func BenchmarkGuestCrunExec(b *testing.B) { inGuest(b, "crun", "exec") }

// BenchmarkGuestCgroupMigrate: one write to cgroup.procs after 0.3 s of
// quiet, timed in the guest, alternately without and with favordynmods
// (bench.sh migrate): the RCU grace-period stall favordynmods removes,
// alone. Reports the mean of each and on/off.
func BenchmarkGuestCgroupMigrate(b *testing.B) {
	g := benchGuest(b)
	_, out, err := g.RunScript(benchCtx(b), "migrate", strconv.Itoa(b.N))
	if err != nil {
		b.Fatalf("%v\n%s", err, out)
	}
	rs, err := ParseResults(out)
	if err != nil {
		b.Fatal(err)
	}
	ns := map[string]float64{}
	for _, r := range rs {
		if r.N != b.N {
			b.Fatalf("bench.sh answered %+v for migrate %d", r, b.N)
		}
		ns[r.Op] = float64(r.NsPerOp)
	}
	if ns["migrate-off"] == 0 || ns["migrate-on"] == 0 {
		b.Fatalf("bench.sh migrate: missing a mode in %+v", rs)
	}
	b.ReportMetric(ns["migrate-off"], "off-ns/op")
	b.ReportMetric(ns["migrate-on"], "on-ns/op")
	b.ReportMetric(ns["migrate-on"]/ns["migrate-off"], "on/off")
}

// BenchmarkGuestLifecycleCgroup2 is BenchmarkGuestLifecycle alternately
// without and with favordynmods on the guest's cgroup2 (remounted through
// the debug console before each lifecycle, untimed, and checked): paired
// runs, so load drift hits both alike. Reports the mean of each and
// on/off; the boot's options are put back afterwards.
func BenchmarkGuestLifecycleCgroup2(b *testing.B) {
	g := benchGuest(b)
	ctx := benchCtx(b)
	boot, err := g.RemountCgroup2(ctx, "")
	if err != nil {
		b.Fatal(err)
	}
	restore := "nsdelegate"
	if HasOption(boot, "favordynmods") {
		restore += ",favordynmods"
	}
	b.Cleanup(func() {
		if _, err := g.RemountCgroup2(context.Background(), restore); err != nil {
			b.Errorf("restoring cgroup2 options: %v", err)
		}
	})
	var sum [2]time.Duration
	for range b.N {
		for mode, opts := range []string{"nsdelegate", "nsdelegate,favordynmods"} {
			got, err := g.RemountCgroup2(ctx, opts)
			if err != nil {
				b.Fatal(err)
			}
			if HasOption(got, "favordynmods") != (mode == 1) || !HasOption(got, "nsdelegate") {
				b.Fatalf("cgroup2 mounted with %s after remount with %s", got, opts)
			}
			t0 := time.Now()
			if err := lifecycleTrue(ctx, g.Client.Agent, nextID("ab")); err != nil {
				b.Fatal(err)
			}
			sum[mode] += time.Since(t0)
		}
	}
	off, on := float64(sum[0])/float64(b.N), float64(sum[1])/float64(b.N)
	b.ReportMetric(off, "off-ns/op")
	b.ReportMetric(on, "on-ns/op")
	b.ReportMetric(on/off, "on/off")
}

// paired runs b.N rounds of: one agent op over vsock (timed on the host),
// one `runc OP` and one `crun OP` (each timed inside the guest by bench.sh,
// the console session around it untimed), so that load drift on this
// shared machine hits all three alike; it reports each mean, the ratios of
// the means agent/runc and agent/crun, and the median of the rounds' own
// agent/runc ratios (agent/runc-pair-median: a round disturbed by a load
// burst moves the means, hardly the median).
// roundOrders are the six orders of one paired round.
var roundOrders = [][3]string{
	{"agent", "runc", "crun"}, {"agent", "crun", "runc"},
	{"runc", "agent", "crun"}, {"runc", "crun", "agent"},
	{"crun", "agent", "runc"}, {"crun", "runc", "agent"},
}

func paired(b *testing.B, op string, agentOp func(ctx context.Context, i int) error) {
	g := benchGuest(b)
	ctx := benchCtx(b)
	var agent time.Duration
	rt := map[string]int64{}
	var pairRatios []float64
	for i := range b.N {
		// The order cycles through all six permutations, so each side
		// follows the agent (whose work the kernel may finish
		// asynchronously, e.g. freeing a removed cgroup) and runs first
		// equally often.
		var d time.Duration
		var runcNs int64
		for _, name := range roundOrders[i%len(roundOrders)] {
			if name == "agent" {
				t0 := time.Now()
				if err := agentOp(ctx, i); err != nil {
					b.Fatal(err)
				}
				d = time.Since(t0)
				agent += d
				continue
			}
			r, out, err := g.RunScript(ctx, BenchDir, name, op, "1")
			if err != nil {
				b.Fatalf("%v\n%s", err, out)
			}
			rt[name] += r.NsPerOp
			if name == "runc" {
				runcNs = r.NsPerOp
			}
		}
		if runcNs > 0 {
			pairRatios = append(pairRatios, float64(d)/float64(runcNs))
		}
	}
	if len(pairRatios) > 0 {
		slices.Sort(pairRatios)
		b.ReportMetric(pairRatios[len(pairRatios)/2], "agent/runc-pair-median")
	}
	n := float64(b.N)
	a := float64(agent) / n
	b.ReportMetric(a, "agent-ns/op")
	b.ReportMetric(float64(rt["runc"])/n, "runc-ns/op")
	b.ReportMetric(float64(rt["crun"])/n, "crun-ns/op")
	b.ReportMetric(a/(float64(rt["runc"])/n), "agent/runc")
	b.ReportMetric(a/(float64(rt["crun"])/n), "agent/crun")
}

// BenchmarkGuestPairedRun is P1 in the guest, paired: agent lifecycle,
// `runc run`, `crun run`, round after round.
func BenchmarkGuestPairedRun(b *testing.B) {
	paired(b, "run", func(ctx context.Context, _ int) error {
		return lifecycleTrue(ctx, guest.Client.Agent, nextID("pr"))
	})
}

// BenchmarkGuestPairedExec is P2 in the guest, paired: agent exec, `runc
// exec`, `crun exec`, round after round (bench.sh starts and deletes its
// container around each timed exec, untimed).
func BenchmarkGuestPairedExec(b *testing.B) {
	g := benchGuest(b)
	ctx := benchCtx(b)
	a := g.Client.Agent
	id := startSleeper(b, ctx, g)
	proc := Spec(Rootfs, "/bin/true").Process
	paired(b, "exec", func(ctx context.Context, i int) error {
		return execTrue(ctx, a, id, "pe"+strconv.Itoa(i), proc)
	})
}

// BenchmarkGuestRoundTrip: one Health.Check over AF_VSOCK (the host's
// vhost-user-vsock device, QEMU, the guest's virtio-vsock): the wire's
// share of P1 (five RPCs) and P2 (three).
func BenchmarkGuestRoundTrip(b *testing.B) {
	g := benchGuest(b)
	ctx := benchCtx(b)
	for b.Loop() {
		if _, err := g.Client.Health.Check(ctx, &pb.CheckRequest{}); err != nil {
			b.Fatal(err)
		}
	}
}
