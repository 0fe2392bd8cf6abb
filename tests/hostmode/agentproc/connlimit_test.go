package agentproc

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/keelvm/keel/agent/connlimit"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/promtext"
)

// pid1NoFile is RLIMIT_NOFILE of the guest's PID 1 (the kernel's INR_OPEN_MAX
// hard limit, to which Go raises the soft one): the agent runs with it here.
const pid1NoFile = 4096

// Issue 11 item 5: 4,000 idle connections and 100 half-sent frames held
// every descriptor of an agent with PID 1's limit, so a new client could not
// even be accepted. With connlimit a new client's Health answers within 1 s.
func TestNewClientServedDespiteIdleAndHalfSentConnections(t *testing.T) {
	const idle, halfSent = 4000, 100
	need := uint64(idle + halfSent + 256)
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Cur < need {
		rl.Cur, rl.Max = max(need, rl.Cur), max(need, rl.Max)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			t.Fatalf("raising RLIMIT_NOFILE to %d for the client side: %v", need, err)
		}
	}
	a := startAgentVia(t, "prlimit", fmt.Sprintf("--nofile=%d:%d", pid1NoFile, pid1NoFile), "--")
	alive(t, a)

	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := 0; i < idle; i++ {
		c, err := net.DialTimeout("unix", a.Sock, 10*time.Second)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	var hdr [10]byte
	binary.BigEndian.PutUint32(hdr[:4], 1000) // a 1000-byte request
	binary.BigEndian.PutUint32(hdr[4:8], 1)
	hdr[8] = 1
	for i := 0; i < halfSent; i++ {
		c, err := net.DialTimeout("unix", a.Sock, 10*time.Second)
		if err != nil {
			t.Fatalf("half-sent connection %d: %v", i, err)
		}
		conns = append(conns, c)
		if _, err := c.Write(append(hdr[:], "only part of the body"...)); err != nil {
			t.Fatalf("half-sent connection %d: %v", i, err)
		}
	}
	// Let the agent's accept loop reach the last of them: a first client,
	// queued behind them all, is answered once it has (on a loaded 2-core
	// machine that takes up to a second). The promise is about the steady
	// state that follows, measured below.
	start := time.Now()
	alive(t, a)
	t.Logf("backlog of %d connections accepted in %v", idle+halfSent, time.Since(start))

	for attempt := 0; attempt < 3; attempt++ {
		start := time.Now()
		c, err := net.DialTimeout("unix", a.Sock, time.Second)
		if err != nil {
			t.Fatalf("new client: %v", err)
		}
		tc := ttrpc.NewClient(c)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := pb.NewHealthClient(tc).Check(ctx, &pb.CheckRequest{})
		cancel()
		d := time.Since(start)
		tc.Close()
		if err != nil || resp.Status != pb.HealthCheckResponse_SERVING {
			t.Fatalf("new client %d: Health after %v: %v, %v (want SERVING within 1 s)", attempt, d, resp, err)
		}
		t.Logf("new client %d: Health SERVING in %v", attempt, d)
	}
	// The agent reports what it did: connections at the cap, idle ones evicted.
	out, _, code := keelctl(t, "--addr", a.Addr, "metrics")
	if code != 0 {
		t.Fatalf("keelctl metrics: exit %d", code)
	}
	m, err := promtext.Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"keel_connections", "keel_connections_evicted"} {
		if _, ok := m[want]; !ok {
			t.Fatalf("metrics lack %q:\n%s", want, out)
		}
		t.Logf("%s %v", want, m[want])
	}
	if open := m["keel_connections"]; open > connlimit.DefaultMaxConns {
		t.Fatalf("keel_connections %v above the cap %d", open, connlimit.DefaultMaxConns)
	}
	if ev := m["keel_connections_evicted"]; ev < idle+halfSent-connlimit.DefaultMaxConns {
		t.Fatalf("keel_connections_evicted %v, want at least %d", ev, idle+halfSent-connlimit.DefaultMaxConns)
	}
}
