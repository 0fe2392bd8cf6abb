package network_test

import (
	"context"
	"errors"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/keelvm/keel/agent/network"
	"github.com/keelvm/keel/agent/network/nettest"
	"github.com/keelvm/keel/init/reaper"
)

// routeNS is a namespace with eth0 (10.0.0.2/24, fd00::2/64) and eth1
// (10.9.0.2/24), both up.
func routeNS(t *testing.T) (*nettest.NS, *network.Network) {
	ns, peer := nettest.New(t), nettest.New(t)
	vethIn(t, ns, peer, "eth0", "02:00:00:00:10:01", "p0")
	vethIn(t, ns, peer, "eth1", "02:00:00:00:10:02", "p1")
	ns.IP("addr", "add", "10.0.0.2/24", "dev", "eth0")
	ns.IP("addr", "add", "fd00::2/64", "dev", "eth0", "nodad")
	ns.IP("addr", "add", "10.9.0.2/24", "dev", "eth1")
	ns.IP("link", "set", "eth0", "up")
	ns.IP("link", "set", "eth1", "up")
	peer.IP("link", "set", "p0", "up")
	peer.IP("link", "set", "p1", "up")
	ns.WaitCarrier("eth0", "eth1")
	return ns, newNet(t, ns, network.Config{})
}

func r4(dest, gw, dev string, scope uint8) network.Route {
	r := network.Route{Device: dev, Scope: scope}
	if dest != "" {
		r.Dest = netip.MustParsePrefix(dest)
	}
	if gw != "" {
		r.Gateway = netip.MustParseAddr(gw)
	}
	return r
}

// Kata's order and shapes: a direct route and a default route through a
// gateway on it (given gateway first: the agent adds direct routes first),
// an IPv6 default route; read back with `ip route`.
func TestUpdateRoutes(t *testing.T) {
	ns, n := routeNS(t)
	ns.IP("route", "add", "10.50.0.0/16", "via", "10.0.0.1", "dev", "eth0") // managed link: replaced away
	ns.IP("route", "add", "10.60.0.0/16", "via", "10.9.0.1", "dev", "eth1") // other link: kept
	v6 := network.Route{Device: "eth0", IPv6: true, Gateway: netip.MustParseAddr("fd00::1")}
	routes := []network.Route{
		r4("", "192.168.77.1", "eth0", 0),
		r4("192.168.77.0/24", "", "eth0", 253),
		v6,
	}
	got, err := n.UpdateRoutes(routes)
	if err != nil {
		t.Fatal(err)
	}
	v4 := ns.IP("route", "show")
	for _, want := range []string{
		"default via 192.168.77.1 dev eth0 \n",
		"192.168.77.0/24 dev eth0 scope link \n",
		"10.60.0.0/16 via 10.9.0.1 dev eth1",
		"10.0.0.0/24 dev eth0 proto kernel scope link src 10.0.0.2",
	} {
		if !strings.Contains(v4, want) {
			t.Errorf("ip route lacks %q:\n%s", want, v4)
		}
	}
	if strings.Contains(v4, "10.50.0.0/16") {
		t.Errorf("the managed link's old route stayed:\n%s", v4)
	}
	if out := ns.IP("-6", "route", "show"); !strings.Contains(out, "default via fd00::1 dev eth0 metric 1024") {
		t.Errorf("ip -6 route:\n%s", out)
	}
	var sawDefault bool
	for _, r := range got {
		if r.Device == "eth0" && !r.Dest.IsValid() && !r.IPv6 && r.Gateway.String() == "192.168.77.1" {
			sawDefault = true
		}
	}
	if !sawDefault {
		t.Errorf("returned routes lack the default route: %+v", got)
	}
	listed, err := n.ListRoutes()
	if err != nil || len(listed) != len(got) {
		t.Errorf("ListRoutes: %d routes, %v; UpdateRoutes returned %d", len(listed), err, len(got))
	}
	// Idempotent: the same request again leaves the same table.
	before := ns.Routes()
	if _, err := n.UpdateRoutes(routes); err != nil {
		t.Fatal(err)
	}
	if after := ns.Routes(); after != before {
		t.Errorf("second call changed the table:\n%s\nwas\n%s", after, before)
	}
}

// A route whose gateway no route covers fails with a clear error naming
// it, and the table (including another link's default route the request
// replaced first) is left exactly as it was.
func TestUpdateRoutesUnreachableGatewayRollsBack(t *testing.T) {
	ns, n := routeNS(t)
	ns.IP("route", "add", "default", "via", "10.9.0.1", "dev", "eth1")
	ns.IP("route", "add", "10.50.0.0/16", "via", "10.0.0.1", "dev", "eth0")
	before := ns.Routes()
	_, err := n.UpdateRoutes([]network.Route{
		r4("", "10.0.0.1", "eth0", 0),               // replaces eth1's default route
		r4("10.70.0.0/16", "", "eth0", 253),         // fine
		r4("10.80.0.0/16", "172.31.9.9", "eth0", 0), // unreachable gateway
	})
	if !errors.Is(err, network.ErrInvalid) || !strings.Contains(err.Error(), "Routes[2].gateway 172.31.9.9: unreachable") {
		t.Fatalf("got %v, want an unreachable-gateway error naming Routes[2]", err)
	}
	if after := ns.Routes(); after != before {
		t.Errorf("table changed:\n%s\nwant\n%s", after, before)
	}
}

func TestUpdateRoutesUnknownDevice(t *testing.T) {
	ns, n := routeNS(t)
	before := ns.Routes()
	_, err := n.UpdateRoutes([]network.Route{r4("10.70.0.0/16", "", "eth0", 253), r4("10.71.0.0/16", "", "nope0", 253)})
	if !errors.Is(err, network.ErrLinkNotFound) || !strings.Contains(err.Error(), "Routes[1].device") {
		t.Fatalf("got %v", err)
	}
	if after := ns.Routes(); after != before {
		t.Errorf("table changed:\n%s\nwant\n%s", after, before)
	}
}

// Permanent entries by default, the given state otherwise; `ip neigh`
// reads them back (proto boot is the one `ip` does not print). A failing
// entry (IPv6 on a link with IPv6 disabled) rolls back the ones before it,
// replaced ones included.
func TestAddARPNeighbors(t *testing.T) {
	ns, n := routeNS(t)
	ns.IP("neigh", "add", "10.0.0.7", "lladdr", "02:00:00:00:99:07", "dev", "eth0", "nud", "permanent")
	err := n.AddARPNeighbors([]network.Neighbor{
		{IP: netip.MustParseAddr("10.0.0.1"), Device: "eth0", Lladdr: mac("02:00:00:00:20:01")},
		{IP: netip.MustParseAddr("fd00::1"), Device: "eth0", Lladdr: mac("02:00:00:00:20:02")},
		{IP: netip.MustParseAddr("10.9.0.1"), Device: "eth1", Lladdr: mac("02:00:00:00:20:03"), State: 0x02}, // NUD_REACHABLE
	})
	if err != nil {
		t.Fatal(err)
	}
	out := ns.IP("neigh", "show") + ns.IP("-6", "neigh", "show")
	for _, want := range []string{
		"10.0.0.1 dev eth0 lladdr 02:00:00:00:20:01 PERMANENT",
		"fd00::1 dev eth0 lladdr 02:00:00:00:20:02 PERMANENT",
		"10.9.0.1 dev eth1 lladdr 02:00:00:00:20:03",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("ip neigh lacks %q:\n%s", want, out)
		}
	}
	if out, err := ns.Exec("sysctl", "-w", "net.ipv6.conf.eth1.disable_ipv6=1"); err != nil {
		t.Fatal(err, out)
	}
	before := ns.IP("neigh", "show", "nud", "permanent")
	err = n.AddARPNeighbors([]network.Neighbor{
		{IP: netip.MustParseAddr("10.0.0.7"), Device: "eth0", Lladdr: mac("02:00:00:00:20:07")}, // replaces
		{IP: netip.MustParseAddr("10.0.0.8"), Device: "eth0", Lladdr: mac("02:00:00:00:20:08")},
		{IP: netip.MustParseAddr("fd00::9"), Device: "eth1", Lladdr: mac("02:00:00:00:20:09")},
	})
	if err == nil || !strings.Contains(err.Error(), "ARPNeighbors[2]") {
		t.Fatalf("got %v, want an error naming ARPNeighbors[2]", err)
	}
	if after := ns.IP("neigh", "show", "nud", "permanent"); after != before {
		t.Errorf("neighbours changed:\n%s\nwant\n%s", after, before)
	}
}

// SetIPTables' rules are what iptables-save (the RPC and the binary run by
// hand in the namespace) reads back, v4 and v6; a missing binary is
// ErrMissingBinary naming it; bad input is ErrInvalid with the tool's words.
func TestIPTablesRoundTrip(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		save := "iptables-save"
		if v6 {
			save = "ip6tables-save"
		}
		if _, err := exec.LookPath(save); err != nil {
			t.Skipf("%s not installed (apt-get install iptables)", save)
		}
		ns := nettest.New(t)
		n := newNet(t, ns, network.Config{})
		rules := "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 7777 -j DROP\nCOMMIT\n"
		if _, err := n.SetIPTables(context.Background(), v6, []byte(rules)); err != nil {
			t.Fatal(err)
		}
		got, err := n.GetIPTables(context.Background(), v6)
		if err != nil {
			t.Fatal(err)
		}
		byHand, err := ns.Exec(save)
		if err != nil {
			t.Fatal(err)
		}
		for _, out := range []string{string(got), byHand} {
			if !strings.Contains(out, "-A INPUT -p tcp -m tcp --dport 7777 -j DROP") || !strings.Contains(out, ":FORWARD DROP") {
				t.Errorf("v6=%v: save lacks the rules:\n%s", v6, out)
			}
		}
		// The agent's own namespace is untouched.
		var mine strings.Builder
		cmd := exec.Command(save)
		cmd.Stdout = &mine
		if _, err := reaper.Command(cmd); err != nil || strings.Contains(mine.String(), "--dport 7777") {
			t.Errorf("v6=%v: rule leaked into the test's own namespace", v6)
		}
		_, err = n.SetIPTables(context.Background(), v6, []byte("*filter\n-A NOPE -j\nCOMMIT\n"))
		if !errors.Is(err, network.ErrInvalid) {
			t.Errorf("v6=%v: bad rules: %v", v6, err)
		}
	}
	ns := nettest.New(t)
	n := newNet(t, ns, network.Config{ToolDirs: []string{t.TempDir()}})
	if _, err := n.GetIPTables(context.Background(), false); !errors.Is(err, network.ErrMissingBinary) || !strings.Contains(err.Error(), "iptables-save") {
		t.Errorf("missing binary: %v", err)
	}
	if _, err := n.SetIPTables(context.Background(), true, nil); !errors.Is(err, network.ErrMissingBinary) || !strings.Contains(err.Error(), "ip6tables-restore") {
		t.Errorf("missing binary: %v", err)
	}
}
