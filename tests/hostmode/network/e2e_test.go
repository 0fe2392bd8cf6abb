// Package network runs two real keel-agent processes in host mode, each in
// a network namespace of its own (two sandboxes), joined by a veth pair.
// Both sides are configured only through the agent API, in Kata's order
// (UpdateInterface, UpdateRoutes, AddARPNeighbors, then CreateSandbox), and
// a container in one sandbox exchanges TCP with a container in the other.
package network

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/container/containertest"
	"github.com/keelvm/keel/agent/network/nettest"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/protocol/types"
	"github.com/keelvm/keel/tests/vmtest"
)

var agentBin, rootfs string

func TestMain(m *testing.M) {
	os.Exit(containertest.HostModeMain(m, func(e *containertest.HostEnv) error {
		agentBin, rootfs = e.AgentBin, e.Rootfs
		return nil
	}))
}

// TestNeedsRoot reports, as a skip with its reason, that this package's
// tests did not run without root (see containertest.RunWithoutRoot).
func TestNeedsRoot(t *testing.T) {
	containertest.SkipUnlessRoot(t, "network namespaces and containers")
}

// spec runs args in the busybox rootfs in the sandbox's network namespace
// (no network namespace of its own: Kata's runtime drops it, containers
// share the guest's).
func spec(args ...string) *pb.Spec {
	return &pb.Spec{
		Root:    &pb.Root{Path: rootfs, Readonly: true},
		Process: &pb.Process{Args: args, Env: []string{"PATH=/bin"}, Cwd: "/", User: &pb.User{}},
		Mounts: []*pb.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=755"}},
		},
		Linux: &pb.Linux{Namespaces: []*pb.LinuxNamespace{{Type: "pid"}, {Type: "mount"}, {Type: "uts"}, {Type: "ipc"}}},
	}
}

// startAgent runs keel-agent inside ns and dials it.
func startAgent(t *testing.T, ns *nettest.NS, name string) pb.AgentServiceService {
	// nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup
	// mounts the agent needs.
	a := containertest.StartAgent(t, containertest.AgentOptions{Bin: agentBin, Name: name, Wrapper: []string{"nsenter", "--net=" + ns.Path}})
	return a.Dial(t).Agent
}

type side struct {
	name, mac, ip, peerIP, peerMAC string
}

// configure sets one sandbox's network up the way Kata's runtime does
// before CreateSandbox: the NIC (found by MAC, renamed eth0), a route to a
// subnet behind the peer (as a CNI result lists it), the peer as a
// permanent neighbour.
func configure(ctx context.Context, t *testing.T, a pb.AgentServiceService, s side) {
	got, err := a.UpdateInterface(ctx, &pb.UpdateInterfaceRequest{Interface: &types.Interface{
		Device: "eth0", Name: "eth0", HwAddr: s.mac, Mtu: 1500, Type: "veth",
		IPAddresses: []*types.IPAddress{{Family: types.IPFamily_v4, Address: s.ip, Mask: "24"}},
	}})
	if err != nil {
		t.Fatalf("%s: UpdateInterface: %v", s.name, err)
	}
	if got.Name != "eth0" || got.HwAddr != s.mac {
		t.Fatalf("%s: UpdateInterface returned %v", s.name, got)
	}
	if _, err := a.UpdateRoutes(ctx, &pb.UpdateRoutesRequest{Routes: &pb.Routes{Routes: []*types.Route{
		{Dest: "10.201.0.0/16", Gateway: s.peerIP, Device: "eth0"},
		{Dest: "10.200.0.0/24", Device: "eth0", Scope: 253, Source: s.ip},
	}}}); err != nil {
		t.Fatalf("%s: UpdateRoutes: %v", s.name, err)
	}
	if _, err := a.AddARPNeighbors(ctx, &pb.AddARPNeighborsRequest{Neighbors: &pb.ARPNeighbors{ARPNeighbors: []*types.ARPNeighbor{
		{ToIPAddress: &types.IPAddress{Address: s.peerIP}, Device: "eth0", Lladdr: s.peerMAC},
	}}}); err != nil {
		t.Fatalf("%s: AddARPNeighbors: %v", s.name, err)
	}
	if _, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: s.name, Hostname: s.name}); err != nil {
		t.Fatalf("%s: CreateSandbox: %v", s.name, err)
	}
}

func TestTwoSandboxesTCP(t *testing.T) {
	nsA, nsB := nettest.New(t), nettest.New(t)
	const macA, macB = "02:00:00:00:a0:01", "02:00:00:00:b0:01"
	// The links exist before the agents start, under names the runtime
	// does not know (as a hot-plugged NIC would be named by the kernel).
	nsA.IP("link", "add", "ens4", "address", macA, "type", "veth", "peer", "name", "ens5", "address", macB, "netns", nsB.Name)
	a, b := startAgent(t, nsA, "A"), startAgent(t, nsB, "B")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	configure(ctx, t, a, side{"A", macA, "10.200.0.1", "10.200.0.2", macB})
	configure(ctx, t, b, side{"B", macB, "10.200.0.2", "10.200.0.1", macA})

	// Read back, independently of the agents: the neighbour is permanent,
	// the routes are there.
	if out := nsA.IP("neigh", "show", "dev", "eth0"); !strings.Contains(out, "10.200.0.2 lladdr "+macB+" PERMANENT") {
		t.Errorf("A's neighbours: %s", out)
	}
	if out := nsB.IP("route", "show"); !strings.Contains(out, "10.201.0.0/16 via 10.200.0.1 dev eth0") {
		t.Errorf("B's routes: %s", out)
	}

	// A serves: prints what it receives, answers pong.
	if _, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "srv", ExecId: "srv",
		OCI: spec("/bin/sh", "-c", "echo pong-from-A | nc -l -p 8080")}); err != nil {
		t.Fatal(err)
	}
	defer a.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: "srv"})
	if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "srv"}); err != nil {
		t.Fatal(err)
	}
	// B connects (retrying until A listens) and prints the answer.
	out, errOut, st, err := vmtest.RunContainer(ctx, b, "cli", spec("/bin/sh", "-c",
		"for i in $(seq 100); do echo ping-from-B | nc -w 5 10.200.0.1 8080 && exit 0; sleep 0.1; done; exit 1"))
	if err != nil || st != 0 || strings.TrimSpace(out) != "pong-from-A" {
		t.Fatalf("client in B: status %d, %v, stdout %q, stderr %q", st, err, out, errOut)
	}
	var got strings.Builder
	for {
		r, err := a.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: "srv", ExecId: "srv", Len: 4096})
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Data) == 0 {
			break
		}
		got.Write(r.Data)
	}
	if strings.TrimSpace(got.String()) != "ping-from-B" {
		t.Errorf("server in A received %q", got.String())
	}
	// The bytes went over the veth: its counters, read by the agent as
	// StatsContainer's per-interface stats, show them.
	if _, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "idle", ExecId: "idle", OCI: spec("/bin/sleep", "100")}); err != nil {
		t.Fatal(err)
	}
	defer a.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: "idle"})
	if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "idle"}); err != nil {
		t.Fatal(err)
	}
	stats, err := a.StatsContainer(ctx, &pb.StatsContainerRequest{ContainerId: "idle"})
	if err != nil {
		t.Fatal(err)
	}
	var eth0 *pb.NetworkStats
	for _, n := range stats.NetworkStats {
		if n.Name == "eth0" {
			eth0 = n
		}
	}
	if eth0 == nil || eth0.RxPackets == 0 || eth0.TxPackets == 0 || eth0.RxBytes < uint64(len("ping-from-B")) {
		t.Errorf("eth0 stats %v (all: %v)", eth0, stats.NetworkStats)
	}
}
