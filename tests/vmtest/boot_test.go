package vmtest

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	pb "github.com/keelvm/keel/protocol/grpc"
)

func TestBootHealthOverVsock(t *testing.T) {
	if why := Available(); why != "" {
		t.Skip(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	g, err := Boot(ctx, Config{Log: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	c, err := g.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d, err := c.Agent.GetGuestDetails(ctx, &pb.GuestDetailsRequest{MemBlockSize: true})
	if err != nil {
		t.Fatal(err)
	}
	if !d.AgentDetails.InitDaemon {
		t.Errorf("agent in the guest is not PID 1: %v", d.AgentDetails)
	}
	t.Logf("guest details: %v", d)
	if !strings.Contains(strings.Join(d.AgentDetails.ExtraFeatures, " "), "keel.boot.listener_ready=") {
		t.Errorf("no boot timeline in %v", d.AgentDetails.ExtraFeatures)
	}
	_ = os.Stdout
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
