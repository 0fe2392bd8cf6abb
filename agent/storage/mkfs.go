package storage

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

// Kata's create_filesystem: a block emptyDir volume arrives as a fresh,
// empty disk and the agent makes an ext4 on it with mkfs.ext4 from the
// guest image, with Kata's options (those of the confidential data hub's
// ext4 volumes): no journal, no reserved blocks, one 128-byte inode per
// 160 KiB.
var mkfsExt4Args = []string{"-F", "-q", "-O", "^has_journal", "-m", "0", "-i", "163840", "-I", "128"}

const (
	// MkfsTimeout bounds one mkfs.ext4 run (a large disk under TCG).
	MkfsTimeout = 2 * time.Minute
	// maxToolOutput bounds what is kept of a tool's output for errors.
	maxToolOutput = 4 << 10
)

// defaultToolDirs are where guest tools are looked for first.
var defaultToolDirs = []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"}

// tool finds an executable of the guest image (Config.ToolDirs).
func (m *Manager) tool(name string) (string, error) {
	dirs := m.cfg.ToolDirs
	if dirs == nil {
		dirs = defaultToolDirs
	}
	if p, ok := guesttool.Find(name, dirs, m.cfg.ToolDirs == nil); ok {
		return p, nil
	}
	return "", fmt.Errorf("%s is not in the guest image (looked in %s)", name, strings.Join(dirs, ", "))
}

// makeExt4 runs mkfs.ext4 on dev, through the reaper (the agent may be
// PID 1), with a deadline.
func makeExt4(ctx context.Context, mkfs, dev string) error {
	ctx, cancel := context.WithTimeout(ctx, MkfsTimeout)
	defer cancel()
	var out capped
	cmd := exec.CommandContext(ctx, mkfs, append(append([]string{}, mkfsExt4Args...), dev)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	st, err := reaper.Command(cmd)
	if err != nil {
		return fmt.Errorf("unable to run %s: %w", mkfs, err)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%s %s: %w", mkfs, dev, ctx.Err())
	}
	if st.Code != 0 || st.Signal != 0 {
		return fmt.Errorf("%s %s failed (%v): %s", mkfs, dev, st, strings.TrimSpace(out.String()))
	}
	return nil
}

// capped keeps the first maxToolOutput bytes written to it.
type capped struct{ bytes.Buffer }

func (c *capped) Write(p []byte) (int, error) {
	if room := maxToolOutput - c.Len(); room > 0 {
		c.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
