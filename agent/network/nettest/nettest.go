// Package nettest makes throwaway network namespaces for tests (with `ip
// netns`, so `ip -n NAME ...` reads them back) and runs iproute2 in them.
package nettest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keelvm/keel/init/reaper"
)

var seq atomic.Int64

// run runs cmd through the reaper (tests of agent code start it, and then
// a plain cmd.Wait races it) and returns stdout, and stderr after it.
func run(cmd *exec.Cmd) (stdout, combined string, err error) {
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	st, err := reaper.Command(cmd)
	if err == nil && (st.Code != 0 || (cmd.ProcessState != nil && !cmd.ProcessState.Success())) {
		err = fmt.Errorf("%s: %v %v", cmd.Path, st, cmd.ProcessState)
	}
	return out.String(), out.String() + errb.String(), err
}

// NS is a named network namespace that lives as long as the test.
type NS struct {
	Name string
	Path string
	t    testing.TB
}

// New creates a namespace (removed at cleanup), skipping when not root.
func New(t testing.TB) *NS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("iproute2's ip is not installed")
	}
	name := fmt.Sprintf("keelt-%d-%d", os.Getpid(), seq.Add(1))
	ns := &NS{Name: name, Path: "/var/run/netns/" + name, t: t}
	if _, out, err := run(exec.Command("ip", "netns", "add", name)); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if _, out, err := run(exec.Command("ip", "netns", "del", name)); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns.IP("link", "set", "lo", "up")
	return ns
}

// IP runs `ip -n NAME args...` and fails the test on error.
func (ns *NS) IP(args ...string) string {
	ns.t.Helper()
	out, err := ns.TryIP(args...)
	if err != nil {
		ns.t.Fatalf("ip -n %s %s: %v: %s", ns.Name, strings.Join(args, " "), err, out)
	}
	return out
}

// TryIP runs `ip -n NAME args...` and returns its stdout (with stderr
// after it on failure: ip warns on stderr at times, e.g. about a peer
// namespace being deleted, which must not disturb comparisons).
func (ns *NS) TryIP(args ...string) (string, error) {
	out, all, err := run(exec.Command("ip", append([]string{"-n", ns.Name}, args...)...))
	if err != nil {
		return all, err
	}
	return out, nil
}

// Exec runs a command inside the namespace (`ip netns exec`) and returns
// its stdout (with stderr after it on failure).
func (ns *NS) Exec(name string, args ...string) (string, error) {
	out, all, err := run(exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...))
	if err != nil {
		return all, err
	}
	return out, nil
}

// JSON runs `ip -j -n NAME args...` and decodes the output into v.
func (ns *NS) JSON(v any, args ...string) {
	ns.t.Helper()
	outs, _, err := run(exec.Command("ip", append([]string{"-j", "-n", ns.Name}, args...)...))
	out := []byte(outs)
	if err != nil {
		ns.t.Fatalf("ip -j -n %s %s: %v", ns.Name, strings.Join(args, " "), err)
	}
	if len(strings.TrimSpace(string(out))) == 0 {
		out = []byte("[]")
	}
	if err := json.Unmarshal(out, v); err != nil {
		ns.t.Fatalf("ip -j -n %s %s: %v: %s", ns.Name, strings.Join(args, " "), err, out)
	}
}

// Link is a link as `ip -j addr show` prints it.
type Link struct {
	Name     string   `json:"ifname"`
	Index    int      `json:"ifindex"`
	MTU      int      `json:"mtu"`
	Address  string   `json:"address"`
	Flags    []string `json:"flags"`
	AddrInfo []struct {
		Family    string `json:"family"`
		Local     string `json:"local"`
		PrefixLen int    `json:"prefixlen"`
		Scope     string `json:"scope"`
	} `json:"addr_info"`
}

// HasFlag reports whether the link has flag (UP, NOARP, ...).
func (l Link) HasFlag(f string) bool {
	for _, x := range l.Flags {
		if x == f {
			return true
		}
	}
	return false
}

// Addrs lists the link's addresses as "ip/len", link-local IPv6 ones left out.
func (l Link) Addrs() []string {
	var out []string
	for _, a := range l.AddrInfo {
		if a.Family == "inet6" && a.Scope == "link" {
			continue
		}
		out = append(out, fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
	}
	return out
}

// Links reads every link with its addresses.
func (ns *NS) Links() map[string]Link {
	ns.t.Helper()
	var ls []Link
	ns.JSON(&ls, "addr", "show")
	out := map[string]Link{}
	for _, l := range ls {
		out[l.Name] = l
	}
	return out
}

// Routes is `ip route show` and `ip -6 route show` of the main table, as text
// (for before/after comparisons and readable failures).
func (ns *NS) Routes() string {
	ns.t.Helper()
	return ns.IP("route", "show", "table", "main") + ns.IP("-6", "route", "show", "table", "main")
}

// WaitCarrier waits (at most 5 s) until every named link has carrier
// (LOWER_UP). A veth's carrier follows its peer's "up" asynchronously
// (the kernel's link watch), and a route on a link without it prints as
// "linkdown": tests that compare route tables wait for it first.
func (ns *NS) WaitCarrier(names ...string) {
	ns.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		links, missing := ns.Links(), ""
		for _, n := range names {
			if !links[n].HasFlag("LOWER_UP") {
				missing = n
				break
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			ns.t.Fatalf("%s: %s has no carrier after 5 s", ns.Name, missing)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
