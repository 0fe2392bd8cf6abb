package vmtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/network/nettest"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/protocol/types"
	"github.com/keelvm/keel/tests/vmm/qemu"
	"github.com/keelvm/keel/tests/vmm/qmp"
	"github.com/vishvananda/netns"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestPodNetwork wires a pod the two ways Kata does and lets a container
// in the guest talk TCP to servers at the far ends, in one boot:
//
//   - tcfilter (Kata's default): the pod netns holds the CNI veth (eth0)
//     and a tap; tc ingress + mirred redirect joins them both ways; a
//     virtio-net NIC on that tap is hot-added over QMP.
//   - macvtap: a MACVTAP device on a second veth (eth1) backs a second
//     hot-added NIC (QEMU gets the /dev/tapN fd).
//
// QEMU runs in the pod netns (as Kata runs its hypervisor). Each NIC is
// configured with UpdateInterface (by PCI path, through the guest's uevent
// registry), UpdateRoutes and AddARPNeighbors in Kata's order, before
// CreateSandbox. The servers live in namespaces of their own at the far
// ends of the veths: only the test's namespaces are ever addressed.
func TestPodNetwork(t *testing.T) {
	if why := Available(); why != "" {
		t.Skip(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	pod, farA, farB := nettest.New(t), nettest.New(t), nettest.New(t)
	const macA, macB = "02:00:00:00:aa:02", "02:00:00:00:bb:01" // guest NIC 0 (= the CNI veth's MAC), far end B
	// tcfilter: eth0 (CNI side, MAC macA) <-> srv0 in farA; tap0 mirrored with eth0.
	pod.IP("link", "add", "eth0", "address", macA, "type", "veth", "peer", "name", "srv0", "netns", farA.Name)
	pod.IP("tuntap", "add", "dev", "tap0", "mode", "tap")
	pod.IP("link", "set", "eth0", "up")
	pod.IP("link", "set", "tap0", "up")
	for _, dir := range [][2]string{{"eth0", "tap0"}, {"tap0", "eth0"}} {
		mustRun(t, "tc", "-n", pod.Name, "qdisc", "add", "dev", dir[0], "ingress")
		mustRun(t, "tc", "-n", pod.Name, "filter", "add", "dev", dir[0], "parent", "ffff:", "protocol", "all",
			"u32", "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", dir[1])
	}
	farA.IP("addr", "add", "10.210.0.1/24", "dev", "srv0")
	farA.IP("link", "set", "srv0", "up")
	srvMACA := farA.Links()["srv0"].Address
	// macvtap: eth1 <-> srv1 in farB; mvtap0 on eth1 backs NIC 1.
	pod.IP("link", "add", "eth1", "type", "veth", "peer", "name", "srv1", "address", macB, "netns", farB.Name)
	pod.IP("link", "add", "link", "eth1", "name", "mvtap0", "type", "macvtap", "mode", "bridge")
	pod.IP("link", "set", "eth1", "up")
	pod.IP("link", "set", "mvtap0", "up")
	farB.IP("addr", "add", "10.211.0.1/24", "dev", "srv1")
	farB.IP("link", "set", "srv1", "up")
	mvtap := pod.Links()["mvtap0"]
	tapDev := macvtapNode(t, pod, mvtap.Index)

	lnA, lnB := listenIn(t, farA.Path, "10.210.0.1:8080"), listenIn(t, farB.Path, "10.211.0.1:8081")
	acceptedA, acceptedB := serve(lnA, "pong-A"), serve(lnB, "pong-B")

	// QEMU in the pod netns, with the macvtap's /dev/tapN open as fd 3.
	wrapper := filepath.Join(t.TempDir(), "qemu-in-pod")
	script := fmt.Sprintf("#!/bin/sh\nexec 3<>%s\nexec nsenter --net=%s %s \"$@\"\n", tapDev, pod.Path, qemu.Binary())
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	g, err := Boot(ctx, Config{Busybox: true, Log: testWriter{t}, ExtraModules: []string{"virtio_net"},
		QEMU: func(c *qemu.Config) { c.Binary = wrapper; c.PCIeRootPorts = 2 }})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	c, err := g.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a := c.Agent
	q := g.VM.QMP()

	start := time.Now()
	if err := q.Execute(ctx, "netdev_add", map[string]any{"type": "tap", "id": "net0", "ifname": "tap0", "script": "no", "downscript": "no"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := q.DeviceAdd(ctx, "virtio-net-pci", "nic0", map[string]any{"netdev": "net0", "mac": macA, "bus": qemu.PCIeRootPortID(0)}); err != nil {
		t.Fatal(err)
	}
	added := time.Since(start)
	ifUp := configureNIC(ctx, t, a, q, "nic0", nicConfig{name: "eth0", mac: macA, ip: "10.210.0.2", gw: "10.210.0.1", gwMAC: srvMACA, subnet: "10.210.0.0/24"})
	firstConfigured := time.Since(start)

	if err := q.Execute(ctx, "netdev_add", map[string]any{"type": "tap", "id": "net1", "fd": "3"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := q.DeviceAdd(ctx, "virtio-net-pci", "nic1", map[string]any{"netdev": "net1", "mac": mvtap.Address, "bus": qemu.PCIeRootPortID(1)}); err != nil {
		t.Fatal(err)
	}
	configureNIC(ctx, t, a, q, "nic1", nicConfig{name: "eth1", mac: mvtap.Address, ip: "10.211.0.2", subnet: "10.211.0.0/24",
		routes: []*types.Route{{Dest: "10.212.0.0/16", Gateway: "10.211.0.1", Device: "eth1"}}, gw: "10.211.0.1", gwMAC: macB})

	secondConfigured := time.Since(start)
	// ListInterfaces sees both NICs as configured; the guest has no
	// iptables, which GetIPTables says by name.
	li, err := a.ListInterfaces(ctx, &pb.ListInterfacesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	for _, i := range li.Interfaces {
		for _, ip := range i.IPAddresses {
			seen[i.Name+" "+i.HwAddr] += ip.Address + " "
		}
	}
	if !strings.Contains(seen["eth0 "+macA], "10.210.0.2") || !strings.Contains(seen["eth1 "+mvtap.Address], "10.211.0.2") {
		t.Errorf("ListInterfaces: %v", seen)
	}
	if _, err := a.GetIPTables(ctx, &pb.GetIPTablesRequest{}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "iptables-save") {
		t.Errorf("GetIPTables in a guest without iptables: %v", err)
	}
	if _, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: "pod", Hostname: "pod"}); err != nil {
		t.Fatal(err)
	}
	sandboxed := time.Since(start)
	script = `set -e
try() { for i in $(seq 200); do if echo "$1" | nc -w 5 "$2" "$3"; then return 0; fi; echo "retry $2" >&2; sleep 0.1; done; return 1; }
s=$(cut -d' ' -f1 /proc/uptime)
try ping-0 10.210.0.1 8080
e=$(cut -d' ' -f1 /proc/uptime)
try ping-1 10.211.0.1 8081
ip route; ip neigh >&2
echo "uptime $s $e" >&2`
	out, errOut, st, err := RunContainer(ctx, a, "client", BusyboxSpec(ContainerRootfs, "/bin/sh", "-c", script))
	if err != nil || st != 0 {
		t.Fatalf("container: status %d, %v\nstdout %s\nstderr %s\nconsole:\n%s", st, err, out, errOut, tail(g.VM.SerialLog(), 20))
	}
	if !strings.HasPrefix(out, "pong-Apong-B") && !strings.HasPrefix(out, "pong-A\npong-B") {
		t.Errorf("container stdout %q, want the servers' answers", out)
	}
	for _, s := range []struct {
		name, from string
		ch         <-chan accepted
	}{{"A (tc mirred)", "10.210.0.2:", acceptedA}, {"B (macvtap)", "10.211.0.2:", acceptedB}} {
		select {
		case r := <-s.ch:
			if r.err != nil || !strings.HasPrefix(r.got, "ping-") || !strings.HasPrefix(r.from, s.from) {
				t.Errorf("server %s: got %q from %s (%v), want ping from %s", s.name, r.got, r.from, r.err, s.from)
			}
			if s.ch == acceptedA {
				ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
				t.Logf("latency under TCG from netdev_add of the tcfilter NIC: device_add returned %v; UpdateInterface took %v (it waited for the NIC); "+
					"UpdateRoutes+AddARPNeighbors done %v; macvtap NIC hot-added and configured %v; CreateSandbox %v; container TCP reachable %v",
					ms(added), ms(ifUp), ms(firstConfigured), ms(secondConfigured), ms(sandboxed), ms(r.at.Sub(start)))
			}
		case <-time.After(10 * time.Second):
			t.Errorf("server %s: no connection", s.name)
		}
	}
	t.Logf("guest routes:\n%s", out)
	var up0, up1 float64
	if i := strings.Index(errOut, "uptime "); i >= 0 {
		fmt.Sscanf(errOut[i:], "uptime %f %f", &up0, &up1)
	}
	t.Logf("in the container: first connection took %.2fs (%d retries); stderr:\n%s", up1-up0, strings.Count(errOut, "retry"), errOut)
}

type nicConfig struct {
	name, mac, ip, subnet, gw, gwMAC string
	routes                           []*types.Route
}

// configureNIC is what Kata's runtime sends for one endpoint after
// hot-adding its NIC: UpdateInterface by PCI path, UpdateRoutes,
// AddARPNeighbors. The PCI path is the root port's slot, then slot 0.
// It returns how long UpdateInterface took.
func configureNIC(ctx context.Context, t *testing.T, a pb.AgentServiceService, q *qmp.Client, id string, n nicConfig) time.Duration {
	t.Helper()
	path, err := pciPath(ctx, q, id)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got, err := a.UpdateInterface(ctx, &pb.UpdateInterfaceRequest{Interface: &types.Interface{
		Device: n.name, Name: n.name, HwAddr: n.mac, Mtu: 1500, DevicePath: path, Type: "virtio",
		IPAddresses: []*types.IPAddress{{Family: types.IPFamily_v4, Address: n.ip, Mask: "24"}},
	}})
	if err != nil {
		t.Fatalf("UpdateInterface %s (PCI path %s): %v", n.name, path, err)
	}
	ifUp := time.Since(start)
	if got.Name != n.name || got.HwAddr != n.mac || len(got.IPAddresses) == 0 {
		t.Errorf("UpdateInterface %s returned %v", n.name, got)
	}
	routes := append([]*types.Route{{Dest: n.subnet, Device: n.name, Scope: 253, Source: n.ip}}, n.routes...)
	rs, err := a.UpdateRoutes(ctx, &pb.UpdateRoutesRequest{Routes: &pb.Routes{Routes: routes}})
	if err != nil {
		t.Fatalf("UpdateRoutes %s: %v", n.name, err)
	}
	t.Logf("routes after %s: %v", n.name, rs.Routes)
	if _, err := a.AddARPNeighbors(ctx, &pb.AddARPNeighborsRequest{Neighbors: &pb.ARPNeighbors{ARPNeighbors: []*types.ARPNeighbor{
		{ToIPAddress: &types.IPAddress{Address: n.gw}, Device: n.name, Lladdr: n.gwMAC},
	}}}); err != nil {
		t.Fatalf("AddARPNeighbors %s: %v", n.name, err)
	}
	return ifUp
}

// pciPath finds device id behind its root port: "RR/00" in Kata's form.
func pciPath(ctx context.Context, q *qmp.Client, id string) (string, error) {
	buses, err := q.QueryPCI(ctx)
	if err != nil {
		return "", err
	}
	for _, b := range buses {
		for _, d := range b.Devices {
			if d.PCIBridge == nil {
				continue
			}
			for _, c := range d.PCIBridge.Devices {
				if c.QdevID == id {
					return fmt.Sprintf("%02x/%02x", d.Slot, c.Slot), nil
				}
			}
		}
	}
	return "", fmt.Errorf("device %s not found behind a root port: %+v", id, buses)
}

// macvtapNode makes a /dev/tapN node for the macvtap with ifindex index
// (there is no udev on the host to make it) and returns its path.
func macvtapNode(t *testing.T, ns *nettest.NS, index int) string {
	t.Helper()
	// sysfs shows the namespace's links only when mounted from inside it.
	out, err := ns.Exec("cat", fmt.Sprintf("/sys/class/net/mvtap0/macvtap/tap%d/dev", index))
	if err != nil {
		t.Fatalf("macvtap device number: %v: %s", err, out)
	}
	var major, minor uint32
	if _, err := fmt.Sscanf(strings.TrimSpace(out), "%d:%d", &major, &minor); err != nil {
		t.Fatalf("macvtap dev %q: %v", out, err)
	}
	p := filepath.Join(t.TempDir(), fmt.Sprintf("tap%d", index))
	mustRun(t, "mknod", p, "c", fmt.Sprint(major), fmt.Sprint(minor))
	return p
}

func runCmd(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

func mustRun(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := runCmd(name, args...); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// listenIn listens on addr inside the network namespace at path (the
// socket belongs to the namespace it was created in).
func listenIn(t *testing.T, path, addr string) net.Listener {
	t.Helper()
	type res struct {
		ln  net.Listener
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		ns, err := netns.GetFromPath(path)
		if err != nil {
			ch <- res{nil, err}
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			ch <- res{nil, err}
			return
		}
		ln, err := net.Listen("tcp", addr)
		ch <- res{ln, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.ln.Close() })
	return r.ln
}

type accepted struct {
	at        time.Time
	from, got string
	err       error
}

// serve accepts one connection, reads what the client sends until it
// shuts its side down, answers reply and closes.
func serve(ln net.Listener, reply string) <-chan accepted {
	ch := make(chan accepted, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			ch <- accepted{err: err}
			return
		}
		defer conn.Close()
		r := accepted{at: time.Now(), from: conn.RemoteAddr().String()}
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		b, err := io.ReadAll(io.LimitReader(conn, 4096))
		r.got, r.err = string(b), err
		if _, err := conn.Write([]byte(reply)); err != nil && r.err == nil {
			r.err = err
		}
		ch <- r
	}()
	return ch
}
