package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/keelvm/keel/protocol/client"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/daxtest"
)

// workload runs in the demo's container: the guest's memory before, a
// read of the 16 MiB file and of every file of the container's root, the
// memory after, and the container's mount table.
const workload = `echo "hello from a Keel container on $(hostname), kernel $(uname -r)"
echo @@; cat /proc/meminfo
cat ` + BigFile + ` >/dev/null; find / -xdev -type f -exec cat {} + >/dev/null
echo @@; cat /proc/meminfo
echo @@; cat /proc/self/mountinfo; echo "pmem0 $(cat /sys/class/block/pmem0/dev 2>/dev/null)"`

// KeelctlTimeout bounds keelctl's connect and container setup: creating
// a container under TCG on a busy machine was seen to take 40 s.
const KeelctlTimeout = 3 * time.Minute

// Evidence is what the demo shows and its test asserts.
type Evidence struct {
	AgentVersion string
	PID1         bool
	// Timeline is the agent's boot milestones (guest uptime, seconds).
	Timeline []Milestone
	// AgentBinaryDAX is STATX_ATTR_DAX on the agent's own binary, as the
	// agent reports it (keel.dax.agent_binary); "" when not reported.
	AgentBinaryDAX string
	// KernelGaps are the keel.kernel.* options the agent says are missing.
	KernelGaps []string
	// KeelctlCommand is the keelctl command line that ran the container.
	KeelctlCommand []string
	Hello          string
	ExitCode       int
	// RootMount is the container's "/" line of /proc/self/mountinfo.
	RootMount string
	// PmemDev is /dev/pmem0's major:minor in the guest: a root the
	// kernel mounted itself (root=) shows as /dev/root, by number only.
	PmemDev string
	// Cached and FileLRU (KiB) before and after the container read
	// BigFile and its root's files.
	CachedBefore, CachedAfter   int64
	FileLRUBefore, FileLRUAfter int64
	BytesRead                   int64
}

// Milestone is one boot timeline entry.
type Milestone struct {
	Name    string
	Seconds float64
}

// CachedGrowth is how much the guest page cache grew (KiB).
func (e *Evidence) CachedGrowth() int64 { return e.CachedAfter - e.CachedBefore }

// Collect asks the agent for its details and runs the workload container
// with keelctl (the binary at keelctl).
func Collect(ctx context.Context, c *client.Client, addr, keelctl string) (*Evidence, error) {
	v, err := c.Health.Version(ctx, &pb.CheckRequest{})
	if err != nil {
		return nil, fmt.Errorf("unable to get the agent version: %w", err)
	}
	d, err := c.Agent.GetGuestDetails(ctx, &pb.GuestDetailsRequest{})
	if err != nil {
		return nil, fmt.Errorf("unable to get the guest details: %w", err)
	}
	e := &Evidence{AgentVersion: v.AgentVersion, PID1: d.AgentDetails.InitDaemon}
	for _, f := range d.AgentDetails.ExtraFeatures {
		switch k, val, _ := strings.Cut(f, "="); {
		case strings.HasPrefix(k, "keel.boot."):
			s, _ := strconv.ParseFloat(val, 64)
			e.Timeline = append(e.Timeline, Milestone{strings.TrimPrefix(k, "keel.boot."), s})
		case k == "keel.dax.agent_binary":
			e.AgentBinaryDAX = val
		case strings.HasPrefix(k, "keel.kernel."):
			e.KernelGaps = append(e.KernelGaps, f)
		}
	}
	// The size of what the workload reads: the big file plus the rest of
	// the container's root (busybox).
	e.BytesRead = BigFileSize
	e.KeelctlCommand = []string{keelctl, "--addr", addr, "--timeout", KeelctlTimeout.String(), "run", "--rm", "--rootfs", ContainerRootfs, "--", "/bin/sh", "-c", workload}
	cmd := exec.CommandContext(ctx, e.KeelctlCommand[0], e.KeelctlCommand[1:]...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		e.ExitCode = ee.ExitCode()
	} else if err != nil {
		return e, fmt.Errorf("keelctl run: %w", err)
	}
	if e.ExitCode != 0 {
		return e, fmt.Errorf("keelctl run exited %d: %s%s", e.ExitCode, out.String(), errOut.String())
	}
	parts := strings.Split(out.String(), "@@\n")
	if len(parts) != 4 {
		return e, fmt.Errorf("the container printed %d sections, want 4:\n%s", len(parts), out.String())
	}
	e.Hello = strings.TrimSpace(parts[0])
	before, err := daxtest.ParseMeminfo(parts[1])
	if err != nil {
		return e, err
	}
	after, err := daxtest.ParseMeminfo(parts[2])
	if err != nil {
		return e, err
	}
	e.CachedBefore, e.CachedAfter = before["Cached"], after["Cached"]
	e.FileLRUBefore, e.FileLRUAfter = before.FileLRU(), after.FileLRU()
	for _, l := range strings.Split(parts[3], "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == "/" {
			e.RootMount = l
		} else if len(f) == 2 && f[0] == "pmem0" {
			e.PmemDev = f[1]
		}
	}
	return e, nil
}

// Check says what is wrong with the evidence of a DAX boot, or nil.
func (e *Evidence) Check() error {
	var errs []error
	if !e.PID1 {
		errs = append(errs, errors.New("the agent is not PID 1"))
	}
	onPmem := strings.Contains(e.RootMount, " /dev/pmem0 ") ||
		(e.PmemDev != "" && strings.Contains(e.RootMount, " /dev/root ") && strings.Fields(e.RootMount)[2] == e.PmemDev)
	if !onPmem || !strings.Contains(e.RootMount, "dax=always") {
		errs = append(errs, fmt.Errorf("the container's root is not on /dev/pmem0 with dax=always: %q", e.RootMount))
	}
	if e.AgentBinaryDAX != "true" {
		errs = append(errs, fmt.Errorf("the agent's binary does not have STATX_ATTR_DAX (keel.dax.agent_binary=%q)", e.AgentBinaryDAX))
	}
	// Through the page cache, reading BigFile alone would add 16 MiB to
	// Cached; mapped by DAX it adds (almost) nothing.
	if limit := e.BytesRead >> 10 / 4; e.CachedGrowth() >= limit {
		errs = append(errs, fmt.Errorf("the guest page cache grew by %d KiB reading %d KiB, not < %d KiB: the reads went through the page cache", e.CachedGrowth(), e.BytesRead>>10, limit))
	}
	ready := false
	for _, m := range e.Timeline {
		ready = ready || m.Name == "listener_ready" && m.Seconds > 0
	}
	if !ready {
		errs = append(errs, fmt.Errorf("no listener_ready in the boot timeline %v", e.Timeline))
	}
	if !strings.HasPrefix(e.Hello, "hello from a Keel container on "+Hostname+",") {
		errs = append(errs, fmt.Errorf("the container printed %q", e.Hello))
	}
	return errors.Join(errs...)
}

// keelctlBinary is $KEELCTL_BIN, else build/keelctl under the module root.
func keelctlBinary() (string, error) {
	if p := os.Getenv("KEELCTL_BIN"); p != "" {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, "build", "keelctl")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return "", fmt.Errorf("no %s: run `make host` (or set KEELCTL_BIN)", p)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("unable to find build/keelctl: set KEELCTL_BIN")
		}
		dir = parent
	}
}
