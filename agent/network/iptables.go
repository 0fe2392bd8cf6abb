package network

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/keelvm/keel/agent/guesttool"
	"github.com/keelvm/keel/init/reaper"
)

const (
	// IPTablesTimeout bounds one iptables-save/-restore run when the
	// caller's context has no earlier deadline.
	IPTablesTimeout = 30 * time.Second
	// iptablesWait is iptables-restore's --wait, in seconds, for the xtables
	// lock (Kata's IPTABLES_RESTORE_WAIT_SEC).
	iptablesWait = "5"
	// MaxIPTablesOutput bounds what a run may print back (a save of a huge
	// rule set is the caller's own doing; the ttrpc message limit is 4 MiB).
	MaxIPTablesOutput = 4 << 20
)

// defaultToolDirs are where the guest's iptables binaries are looked for
// (Kata's two places), before $PATH.
var defaultToolDirs = []string{"/usr/sbin", "/sbin"}

// tool finds an iptables binary, ErrMissingBinary naming it when absent.
func (n *Network) tool(name string) (string, error) {
	dirs := n.cfg.ToolDirs
	if dirs == nil {
		dirs = defaultToolDirs
	}
	if p, ok := guesttool.Find(name, dirs, n.cfg.ToolDirs == nil); ok {
		return p, nil
	}
	return "", fmt.Errorf("%s: not installed in the guest (looked in %s): %w", name, strings.Join(dirs, ", "), ErrMissingBinary)
}

func iptablesName(v6 bool, verb string) string {
	if v6 {
		return "ip6tables-" + verb
	}
	return "iptables-" + verb
}

// GetIPTables returns iptables-save's output (ip6tables-save with v6).
// Equivalent to: `iptables-save`.
func (n *Network) GetIPTables(ctx context.Context, v6 bool) ([]byte, error) {
	return n.runTool(ctx, iptablesName(v6, "save"), nil, nil)
}

// SetIPTables feeds data to iptables-restore (ip6tables-restore with v6),
// which replaces the tables data names, and returns what it printed.
// Equivalent to: `iptables-restore --wait 5 < data`.
func (n *Network) SetIPTables(ctx context.Context, v6 bool, data []byte) ([]byte, error) {
	return n.runTool(ctx, iptablesName(v6, "restore"), []string{"--wait", iptablesWait}, data)
}

// runTool runs an iptables tool in the configured namespace, through the
// reaper, with a deadline and bounded output.
func (n *Network) runTool(ctx context.Context, name string, args []string, stdin []byte) ([]byte, error) {
	path, err := n.tool(name)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, IPTablesTimeout)
	defer cancel()
	var stdout, stderr limitedBuffer
	stdout.max, stderr.max = MaxIPTablesOutput, 64<<10
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	var st reaper.ExitStatus
	err = n.inNetNS(func() error {
		var err error
		st, err = reaper.Command(cmd)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("unable to run %s: %w", name, err)
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("%s: %w", name, ctx.Err())
	}
	if st.Code != 0 {
		msg := strings.TrimSpace(stderr.String())
		if stdin != nil {
			// A restore that fails on its input is the caller's mistake.
			return nil, fmt.Errorf("%s failed (%v): %s: %w", name, st, msg, ErrInvalid)
		}
		return nil, fmt.Errorf("%s failed (%v): %s", name, st, msg)
	}
	if stdout.overflow {
		return nil, fmt.Errorf("%s printed more than %d bytes", name, MaxIPTablesOutput)
	}
	return stdout.Bytes(), nil
}

// limitedBuffer keeps the first max bytes written and notes an overflow
// (it never fails a write, so the tool is not killed by SIGPIPE mid-run).
type limitedBuffer struct {
	bytes.Buffer
	max      int
	overflow bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); len(p) > room {
		b.overflow = true
		if room > 0 {
			b.Buffer.Write(p[:room])
		}
		return len(p), nil
	}
	return b.Buffer.Write(p)
}
