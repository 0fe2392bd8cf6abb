package containerbench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keelvm/keel/agent/containers"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/protocol/outputreader"
)

// TestOutputReader runs protocol/outputreader against the real agent, in
// process (agent/server on a unix socket, as the in-process benchmarks)
// and as the keel-agent binary (as the wire benchmarks): a container's
// pseudo-random stdout and stderr arrive byte for byte, then io.EOF; a
// container id the agent does not know gives
// the same NotFound error as the generated client; a deadline met while
// the process is silent leaves the reader usable.
func TestOutputReader(t *testing.T) {
	for _, tc := range []struct {
		name string
		wire bool
	}{{"inproc", false}, {"wire", true}} {
		t.Run(tc.name, func(t *testing.T) {
			a, addr, cid := readerAgent(t, tc.wire, "outreader")
			checkOutputReader(t, a, addr, cid)
		})
	}
}

// readerAgent starts an agent for protocol/outputreader to read from: in
// process (agent/server on a unix socket, as the in-process benchmarks)
// or, with wire, the keel-agent binary in host mode (as the wire
// benchmarks). It returns the agent's client, the address outputreader
// dials and the container id to use: name, or for the binary name-wire-PID
// (its container cgroups are killed by that id when the test ends).
func readerAgent(tb testing.TB, wire bool, name string) (pb.AgentServiceService, string, string) {
	tb.Helper()
	if !wire {
		r, _ := newRPC(tb, containers.Options{ExecIOLinger: time.Nanosecond})
		c, addr := serveTTRPCAt(tb, r)
		return c.Agent, addr, name
	}
	id := fmt.Sprintf("%s-wire-%d", name, os.Getpid())
	ids := []string{id}
	a, _, addr := startAgentBinAt(tb, agentBinary(tb), &ids)
	return a, addr, id
}

func checkOutputReader(t *testing.T, a pb.AgentServiceService, addr, cid string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := runContainer(ctx, a, cid, "/bin/sleep", "1000"); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(16, 3))
	payload := func(name string, n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		p := filepath.Join(rootfs, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(p) })
		return b
	}
	out := payload(cid+"-out", 3<<20+17)
	errOut := payload(cid+"-err", 1<<20+5)

	t.Run("bytes", func(t *testing.T) {
		const eid = "cat"
		script := fmt.Sprintf("cat /%s-out & cat /%s-err >&2; wait", cid, cid)
		if _, err := a.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: cid, ExecId: eid, Process: pbProcess("/bin/sh", "-c", script)}); err != nil {
			t.Fatal(err)
		}
		type result struct {
			b   []byte
			err error
		}
		read := func(s outputreader.Stream) chan result {
			ch := make(chan result, 1)
			go func() {
				r, err := outputreader.Dial(ctx, addr, s, cid, eid, outputreader.Options{})
				if err != nil {
					ch <- result{nil, err}
					return
				}
				defer r.Close()
				var buf bytes.Buffer
				// As Kata's shim copies: 32 KiB at a time.
				_, err = io.CopyBuffer(&buf, r, make([]byte, 32<<10))
				if err == nil {
					if n, err2 := r.Read(make([]byte, 10)); n != 0 || err2 != io.EOF {
						err = fmt.Errorf("Read after the end: %d, %v", n, err2)
					}
				}
				ch <- result{buf.Bytes(), err}
			}()
			return ch
		}
		so, se := read(outputreader.Stdout), read(outputreader.Stderr)
		for _, c := range []struct {
			name string
			ch   chan result
			want []byte
		}{{"stdout", so, out}, {"stderr", se, errOut}} {
			r := <-c.ch
			if r.err != nil {
				t.Fatalf("%s: %v", c.name, r.err)
			}
			if !bytes.Equal(r.b, c.want) {
				t.Fatalf("%s: %d bytes, want %d, first difference at %d", c.name, len(r.b), len(c.want), firstDifference(r.b, c.want))
			}
		}
		if w, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: cid, ExecId: eid}); err != nil || w.Status != 0 {
			t.Fatalf("WaitProcess: %v %v", w, err)
		}
	})

	t.Run("not found", func(t *testing.T) {
		for _, s := range []outputreader.Stream{outputreader.Stdout, outputreader.Stderr} {
			r, err := outputreader.Dial(ctx, addr, s, "no-such-container", "x", outputreader.Options{})
			if err != nil {
				t.Fatal(err)
			}
			_, rerr := r.Read(make([]byte, 32<<10))
			r.Close()
			req := &pb.ReadStreamRequest{ContainerId: "no-such-container", ExecId: "x", Len: 32 << 10}
			var gerr error
			if s == outputreader.Stderr {
				_, gerr = a.ReadStderr(ctx, req)
			} else {
				_, gerr = a.ReadStdout(ctx, req)
			}
			if status.Code(gerr) != codes.NotFound {
				t.Fatalf("generated client: %v, want NotFound", gerr)
			}
			if status.Code(rerr) != codes.NotFound || rerr.Error() != gerr.Error() {
				t.Errorf("%s: Reader: %v\ngenerated client: %v", s, rerr, gerr)
			}
		}
	})

	t.Run("deadline", func(t *testing.T) {
		const eid = "late"
		if _, err := a.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: cid, ExecId: eid, Process: pbProcess("/bin/sh", "-c", "sleep 2; echo hi")}); err != nil {
			t.Fatal(err)
		}
		r, err := outputreader.Dial(ctx, addr, outputreader.Stdout, cid, eid, outputreader.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		r.SetDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := r.Read(make([]byte, 100)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read before any output, 200 ms deadline: %v", err)
		}
		r.SetDeadline(time.Time{})
		cctx, ccancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer ccancel()
		if _, err := r.ReadContext(cctx, make([]byte, 100)); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("ReadContext before any output, 100 ms context: %v", err)
		}
		b, err := io.ReadAll(r)
		if err != nil || string(b) != "hi\n" {
			t.Fatalf("after the deadlines: %q, %v", b, err)
		}
		if w, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: cid, ExecId: eid}); err != nil || w.Status != 0 {
			t.Fatalf("WaitProcess: %v %v", w, err)
		}
	})
}

func firstDifference(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
