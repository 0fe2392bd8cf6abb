package containers_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/container"
	"github.com/keelvm/keel/agent/containers"
	pb "github.com/keelvm/keel/protocol/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakePassFD hands out the agent ends of unix socket pairs by port.
type fakePassFD map[uint32]net.Conn

func (f fakePassFD) Take(port uint32, _ time.Duration) (net.Conn, error) {
	c, ok := f[port]
	if !ok {
		return nil, fmt.Errorf("no connection for port %d", port)
	}
	delete(f, port)
	return c, nil
}

func unixPair(t *testing.T) (agent, host net.Conn) {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "p.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	host, err = net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	agent, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close() })
	return agent, host
}

// TestPassFDStdio: stdin_port/stdout_port streams carry the bytes directly
// (Kata runtime-rs passfd), and an unknown port fails with the field named.
func TestPassFDStdio(t *testing.T) {
	no := false
	sb, err := container.New(container.Config{StateRoot: t.TempDir(), CgroupParent: "/" + cgParent, NoPivotRoot: &no})
	if err != nil {
		t.Fatal(err)
	}
	inA, inH := unixPair(t)
	outA, outH := unixPair(t)
	pfd := fakePassFD{10: inA, 11: outA}
	r := containers.New(containers.Options{Sandbox: sb, PassFD: pfd})
	ctx := context.Background()
	defer r.DestroySandbox(ctx, &pb.DestroySandboxRequest{})

	_, err = r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "pf", OCI: spec("/bin/sh", "-c", "read l; echo \"got:$l\""), StdinPort: 10, StdoutPort: 11})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "pf"}); err != nil {
		t.Fatal(err)
	}
	if _, err := inH.Write([]byte("fast\n")); err != nil {
		t.Fatal(err)
	}
	inH.(*net.UnixConn).CloseWrite()
	outH.SetReadDeadline(time.Now().Add(20 * time.Second))
	b, err := io.ReadAll(outH)
	if err != nil || string(b) != "got:fast\n" {
		t.Fatalf("passfd stdout %q %v", b, err)
	}
	if st := wait(t, r, "pf", ""); st != 0 {
		t.Errorf("status %d", st)
	}
	// The stream is attached: the RPC path refuses it.
	if _, err := r.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: "pf", Len: 10}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("ReadStdout of an attached stream: %v", err)
	}
	_, err = r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "pf2", OCI: spec("/bin/true"), StderrPort: 99})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "stderr_port 99") {
		t.Errorf("unknown port: %v", err)
	}
	if _, err := sb.Container("pf2"); err == nil {
		t.Error("container created despite the failed stdio")
	}
}
