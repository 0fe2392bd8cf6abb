package server

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keelvm/keel/agent/metrics"
	"github.com/keelvm/keel/agent/streamread"
	pb "github.com/keelvm/keel/protocol/grpc"
)

// framed implements streamread.Reader: container "now" has output waiting
// (answered from the connection's reader), "wait" waits for the request's
// context to end (a pending long poll), "panic" panics.
type framed struct {
	encoded
	waiting atomic.Int64
}

func (f *framed) ReadStream(ctx context.Context, r *pb.ReadStreamRequest, stderr bool, headroom int, bufs streamread.Buffers) ([]byte, error) {
	switch r.ContainerId {
	case "wait":
		f.waiting.Add(1)
		defer f.waiting.Add(-1)
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	case "panic":
		panic("reader bug")
	}
	b := bufs.Get(headroom + 5)
	copy(b[headroom:], "hello")
	return b, nil
}

func (f *framed) ReadStreamNow(r *pb.ReadStreamRequest, stderr bool, headroom int, bufs streamread.Buffers) ([]byte, bool) {
	if r.ContainerId != "now" {
		return nil, false
	}
	b := bufs.Get(headroom + 3)
	copy(b[headroom:], "now")
	return b, true
}

// A service implementing streamread.Reader has ReadStdout/ReadStderr
// answered by agent/streamread with every RPC's accounting: counted in
// the metrics (both paths), a panic answered Internal, and a pending read
// counted against the agent-wide cap, so reads over it are answered
// ResourceExhausted at once.
func TestStreamReadAccounting(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := metrics.New()
	f := &framed{}
	c := serveOpts(t, f, m, WithMaxPending(2))
	for _, id := range []string{"now", "later"} {
		r, err := c.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: id, Len: 10})
		if want := map[string]string{"now": "now", "later": "hello"}[id]; err != nil || string(r.Data) != want {
			t.Fatalf("ReadStdout %s: %q, %v; want %q", id, r.GetData(), err, want)
		}
	}
	if _, err := c.ReadStderr(ctx, &pb.ReadStreamRequest{ContainerId: "panic", Len: 10}); status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "reader bug") {
		t.Fatalf("panicking reader: %v, want Internal naming the panic", err)
	}
	// Both reads counted: "now" answered from the reader (Record), "later"
	// through Observe; and the panicking ReadStderr. Observe records in a
	// deferred func, after the reply is written: the client may see the
	// reply first, so poll for a few seconds rather than read once.
	counted := func(out string) bool {
		return strings.Contains(out, `keel_agent_rpc_duration_seconds_count{method="/grpc.AgentService/ReadStdout"} 2`+"\n") &&
			strings.Contains(out, `keel_agent_rpc_duration_seconds_count{method="/grpc.AgentService/ReadStderr"} 1`+"\n")
	}
	out := m.Render()
	for deadline := time.Now().Add(5 * time.Second); !counted(out) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		out = m.Render()
	}
	if !counted(out) {
		t.Fatalf("metrics do not count the reads (want 2 ReadStdout, 1 ReadStderr):\n%s", out)
	}
	wctx, wcancel := context.WithCancel(ctx)
	for range 2 {
		go c.ReadStdout(wctx, &pb.ReadStreamRequest{ContainerId: "wait", Len: 10})
	}
	for f.waiting.Load() < 2 {
		if ctx.Err() != nil {
			t.Fatal("the pending reads did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := c.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: "later", Len: 10}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("read over the cap: %v, want ResourceExhausted", err)
	}
	wcancel()
}
