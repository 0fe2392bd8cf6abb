// Package agentproc runs the real keel-agent binary as a process on a Unix
// socket and drives it the way a host would: through keelctl and through the
// client library, including hostile input on the socket.
package agentproc

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/keelvm/keel/agent/container/containertest"
	"github.com/keelvm/keel/agent/service"
	"github.com/keelvm/keel/protocol/client"
	pb "github.com/keelvm/keel/protocol/grpc"
)

var agentBin, keelctlBin string

// TestMain builds the binaries once, unless the Makefile already did and
// points at them (KEEL_AGENT_BIN / KEELCTL_BIN).
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "keel-agentproc-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	keelctlBin = os.Getenv("KEELCTL_BIN")
	build := func(pkg, out string) string {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n", pkg, err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
		return out
	}
	if agentBin, err = containertest.AgentBinary(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	if keelctlBin == "" {
		keelctlBin = build("github.com/keelvm/keel/cmd/keelctl", filepath.Join(dir, "keelctl"))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// startAgent starts the agent with debug logging.
func startAgent(t *testing.T) *containertest.Agent { t.Helper(); return startAgentVia(t) }

// startAgentVia starts the agent through a wrapper command (e.g. prlimit
// with its arguments), or directly when wrapper is empty.
func startAgentVia(t *testing.T, wrapper ...string) *containertest.Agent {
	t.Helper()
	return containertest.StartAgent(t, containertest.AgentOptions{Bin: agentBin, Wrapper: wrapper,
		Args: []string{"--log-level", "debug"}, StopTimeout: 5 * time.Second})
}

// alive checks that the agent still answers Health.
func alive(t *testing.T, a *containertest.Agent) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, a.Addr)
	if err != nil {
		t.Fatalf("agent no longer reachable: %v", err)
	}
	defer c.Close()
	resp, err := c.Health.Check(ctx, &pb.CheckRequest{})
	if err != nil || resp.Status != pb.HealthCheckResponse_SERVING {
		t.Fatalf("health after abuse: %v, %v", resp, err)
	}
}

func keelctl(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	cmd := exec.Command(keelctlBin, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func TestKeelctlAgainstAgent(t *testing.T) {
	a := startAgent(t)

	out, errOut, code := keelctl(t, "--addr", a.Addr, "health")
	if code != 0 || !strings.Contains(out, `"SERVING"`) {
		t.Fatalf("health: code %d out %q err %q", code, out, errOut)
	}

	out, _, code = keelctl(t, "--addr", a.Addr, "version")
	var v struct{ GrpcVersion, AgentVersion string }
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || v.GrpcVersion != "0.0.1" || v.AgentVersion == "" {
		t.Fatalf("version: code %d out %q", code, out)
	}

	out, _, code = keelctl(t, "--addr", a.Addr, "guest-details")
	var gd struct {
		MemBlockSizeBytes string
		AgentDetails      struct {
			Version    string
			InitDaemon bool
		}
	}
	if code != 0 || json.Unmarshal([]byte(out), &gd) != nil {
		t.Fatalf("guest-details: code %d out %q", code, out)
	}
	if gd.AgentDetails.Version != v.AgentVersion || gd.AgentDetails.InitDaemon {
		t.Errorf("guest-details agent details %+v, want version %q and not init", gd.AgentDetails, v.AgentVersion)
	}
	if want := memBlockSize(t); gd.MemBlockSizeBytes != want {
		t.Errorf("mem block size %q, want %q from sysfs", gd.MemBlockSizeBytes, want)
	}

	// An RPC no handler implements must answer Unimplemented, naming it.
	rpc := firstUnimplemented(t)
	_, errOut, code = keelctl(t, "--addr", a.Addr, "call", rpc, "--json", "{}")
	if code != 1 || !strings.Contains(errOut, "Unimplemented") || !strings.Contains(errOut, rpc) {
		t.Errorf("call %s: code %d stderr %q, want exit 1 with Unimplemented naming the RPC", rpc, code, errOut)
	}

	out, _, code = keelctl(t, "--addr", a.Addr, "metrics")
	if code != 0 || !strings.Contains(out, `keel_agent_rpc_duration_seconds_count{method="/grpc.Health/Check"} 1`) {
		t.Errorf("metrics: code %d, want one Health/Check counted:\n%s", code, out)
	}
}

func TestKeelctlUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--addr", "unix:///x", "frobnicate"},
		{"--addr", "unix:///x", "call"},
		{"--addr", "unix:///x", "call", "NoSuchRPC"},
		{"--addr", "unix:///x", "call", "CreateContainer", "--json", "{not json"},
		{"--addr", "unix:///x", "call", "CreateContainer", "--json", `{"noSuchField":1}`},
		{"--bogus-flag"},
		{"health"}, // no address
	} {
		if _, errOut, code := keelctl(t, args...); code != 2 || errOut == "" {
			t.Errorf("keelctl %q: exit %d stderr %q, want 2 with a message", args, code, errOut)
		}
	}
	_, errOut, code := keelctl(t, "--addr", "tcp://1.2.3.4:5", "health")
	if code != 1 || !strings.Contains(errOut, `unknown scheme "tcp"`) {
		t.Errorf("bad scheme: exit %d stderr %q", code, errOut)
	}
}

func TestAgentRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--state-root", ""},
		{"--state-root", "relative/dir"},
		{"--log-level", "loud"},
		{"extra-arg"},
	} {
		// A bad flag must fail at once; an agent that starts anyway is
		// killed by the deadline and fails the check below.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := exec.CommandContext(ctx, agentBin, append([]string{"--addr", "unix://" + filepath.Join(t.TempDir(), "a.sock")}, args...)...).CombinedOutput()
		timedOut := ctx.Err() != nil
		cancel()
		if err == nil || timedOut || !strings.Contains(string(out), args[0]) {
			t.Errorf("keel-agent %q: err %v, output %q; want failure naming %s", args, err, out, args[0])
		}
	}
}

func TestAgentRejectsBadListenAddress(t *testing.T) {
	for _, addr := range []string{"tcp://127.0.0.1:1", "unix://relative", "vsock://x:1", "hvsock:///tmp/x:1"} {
		out, err := exec.Command(agentBin, "--addr", addr).CombinedOutput()
		if err == nil || !strings.Contains(string(out), addr) {
			t.Errorf("keel-agent --addr %s: err %v, output %q; want failure naming the address", addr, err, out)
		}
	}
}

// frame writes one raw ttrpc frame: length, stream id, type, flags.
func frame(streamID uint32, typ byte, payload []byte) []byte {
	h := make([]byte, 10, 10+len(payload))
	binary.BigEndian.PutUint32(h[0:], uint32(len(payload)))
	binary.BigEndian.PutUint32(h[4:], streamID)
	h[8] = typ
	return append(h, payload...)
}

func TestGarbageFrameDoesNotHurtOtherClients(t *testing.T) {
	a := startAgent(t)
	alive(t, a)
	for _, junk := range [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		frame(1, 1, []byte{0xff, 0xff, 0xff, 0xff, 0x0f}), // request type, undecodable payload
		frame(2, 42, []byte("unknown frame type")),
		{0, 0, 0},
	} {
		c, err := net.Dial("unix", a.Sock)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(junk)
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		io.Copy(io.Discard, c) // the agent answers or hangs up; it must not crash
		c.Close()
		alive(t, a)
	}
	if a.Exited() {
		t.Fatal("agent exited")
	}
}

func TestOversizedMessage(t *testing.T) {
	a := startAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, a.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// The client library refuses to send a frame over ttrpc's 4 MiB limit.
	_, err = c.Agent.WriteStdin(ctx, &pb.WriteStreamRequest{ContainerId: "c", ExecId: "e", Data: make([]byte, 5<<20)})
	if err == nil || !strings.Contains(err.Error(), "exceed") {
		t.Fatalf("5 MiB WriteStdin: %v, want a message-size error", err)
	}

	// A raw peer that sends one anyway gets ResourceExhausted on that stream,
	// and the same connection keeps working.
	raw, err := net.Dial("unix", a.Sock)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	req, _ := proto.Marshal(&ttrpc.Request{Service: "grpc.AgentService", Method: "WriteStdin", Payload: make([]byte, 5<<20)})
	if _, err := raw.Write(frame(1, 1, req)); err != nil {
		t.Fatal(err)
	}
	if st := readResponse(t, raw, 1); st.Code() != codes.ResourceExhausted {
		t.Fatalf("oversized request: %v, want ResourceExhausted", st)
	}
	health, _ := proto.Marshal(&pb.CheckRequest{})
	req, _ = proto.Marshal(&ttrpc.Request{Service: "grpc.Health", Method: "Check", Payload: health})
	raw.Write(frame(3, 1, req))
	if st := readResponse(t, raw, 3); st.Code() != codes.OK {
		t.Fatalf("health on the same connection after the oversized frame: %v", st)
	}
	alive(t, a)
}

func readResponse(t *testing.T, c net.Conn, stream uint32) *status.Status {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	h := make([]byte, 10)
	if _, err := io.ReadFull(c, h); err != nil {
		t.Fatalf("reading response header: %v", err)
	}
	if id := binary.BigEndian.Uint32(h[4:]); id != stream || h[8] != 2 {
		t.Fatalf("response for stream %d type %d, want stream %d type 2", id, h[8], stream)
	}
	p := make([]byte, binary.BigEndian.Uint32(h[0:]))
	if _, err := io.ReadFull(c, p); err != nil {
		t.Fatal(err)
	}
	var resp ttrpc.Response
	if err := proto.Unmarshal(p, &resp); err != nil {
		t.Fatal(err)
	}
	return status.FromProto(resp.Status)
}

func memBlockSize(t *testing.T) string {
	b, err := os.ReadFile("/sys/devices/system/memory/block_size_bytes")
	if err != nil {
		return "0"
	}
	var n uint64
	fmt.Sscanf(strings.TrimSpace(string(b)), "%x", &n)
	return fmt.Sprint(n)
}

func firstUnimplemented(t *testing.T) string {
	done := map[string]bool{}
	for _, n := range service.Implemented() {
		done[n] = true
	}
	svc := pb.File_agent_proto.Services().Get(0)
	for i := 0; i < svc.Methods().Len(); i++ {
		if n := string(svc.Methods().Get(i).Name()); !done[n] {
			return n
		}
	}
	t.Skip("every RPC is implemented")
	return ""
}
