package containerbench

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/containers"
	pb "github.com/keelvm/keel/protocol/grpc"
)

// execTrue is what the Kata shim does for `exec /bin/true` without a
// terminal: ExecProcess, ReadStdout until EOF, WaitProcess.
func execTrue(ctx context.Context, r containerAPI, cid, eid string) error {
	if _, err := r.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: cid, ExecId: eid, Process: pbProcess("/bin/true")}); err != nil {
		return fmt.Errorf("ExecProcess: %w", err)
	}
	if n, err := drainStdout(ctx, r, cid, eid, 32<<10); err != nil || n != 0 {
		return fmt.Errorf("ReadStdout: %d bytes, %v", n, err)
	}
	w, err := r.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: cid, ExecId: eid})
	if err != nil {
		return fmt.Errorf("WaitProcess: %w", err)
	}
	if w.Status != 0 {
		return fmt.Errorf("exec /bin/true: status %d", w.Status)
	}
	return nil
}

// BenchmarkExec: exec of /bin/true in a running container through the
// agent's RPC handlers, in-process (no wire).
func BenchmarkExec(b *testing.B) {
	// The stdio of a collected exec is closed at once: the loop has read
	// it to EOF already, and a 10 s linger would pile up pipes.
	r, _ := newRPC(b, containers.Options{ExecIOLinger: time.Nanosecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := runContainer(ctx, r, "exec", "/bin/sleep", "1000"); err != nil {
		b.Fatal(err)
	}
	var lat []time.Duration
	for i := 0; b.Loop(); i++ {
		t0 := time.Now()
		if err := execTrue(ctx, r, "exec", fmt.Sprintf("x%d", i)); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.ReportMetric(ms(percentile(lat, 0.5)), "median-ms")
}

// BenchmarkRuncExec: `runc exec` of /bin/true in a container that
// `runc run -d` started from the same spec, with Debian's runc.
func BenchmarkRuncExec(b *testing.B) {
	benchRuncExec(b, newRunc(b), fmt.Sprintf("keel-bench-exec-%d", os.Getpid()))
}

// benchRuncExec times `runc exec id /bin/true` in a container rt started.
func benchRuncExec(b *testing.B, rt *runcTool, id string) {
	bundle := runcBundle(b, id, "/bin/sleep", "1000")
	if err := rt.run("run", "-d", "--bundle", bundle, id); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := rt.run("delete", "-f", id); err != nil {
			b.Errorf("cleanup: %v", err)
		}
	})
	var lat []time.Duration
	for b.Loop() {
		t0 := time.Now()
		if err := rt.run("exec", id, "/bin/true"); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.ReportMetric(ms(percentile(lat, 0.5)), "median-ms")
}
