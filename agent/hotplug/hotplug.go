// Package hotplug brings vCPUs and memory the VMM hot-added to a running
// sandbox into use (OnlineCPUMem, MemHotplugByProbe).
//
// Neither Debian's nor Keel's guest kernel onlines hot-added resources on
// its own (no MEMORY_HOTPLUG_DEFAULT_ONLINE), so a vCPU added with QMP
// device_add shows up as /sys/devices/system/cpu/cpuN with online=0 and a
// DIMM as offline /sys/devices/system/memory/memoryN blocks. Their sysfs
// entries appear asynchronously, tens of milliseconds after the VMM
// returned, which is why CPUs are onlined with a retry until the count the
// runtime asked for is reached.
package hotplug

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keelvm/keel/agent/errdefs"
)

// Defaults of Onliner.
const (
	// DefaultCPUTimeout bounds the wait for hot-added CPUs to appear and
	// come online (Kata: 100 retries of 50 ms).
	DefaultCPUTimeout = 5 * time.Second
	// retryInterval is the pause between two CPU onlining rounds.
	retryInterval = 50 * time.Millisecond
)

// ErrInvalid marks a request that can never succeed; ErrUnsupported a
// guest kernel that lacks the interface.
var (
	ErrInvalid     = errdefs.New(errdefs.ErrInvalidArgument, "invalid argument")
	ErrUnsupported = errdefs.New(errdefs.ErrFailedPrecondition, "not supported by the guest kernel")
)

// Compiled on first use, not at package init (every container init, a
// re-exec of this binary, would pay for it).
var (
	cpuDir    = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^cpu[0-9]+$`) })
	memoryDir = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^memory[0-9]+$`) })
)

// Onliner onlines CPUs and memory blocks through sysfs. The zero value
// works on /sys with DefaultCPUTimeout.
type Onliner struct {
	// SysfsRoot is where sysfs is mounted ("/sys" when empty).
	SysfsRoot string
	// CPUTimeout bounds OnlineCPUs (DefaultCPUTimeout when zero).
	CPUTimeout time.Duration
}

func (o *Onliner) path(p ...string) string {
	root := o.SysfsRoot
	if root == "" {
		root = "/sys"
	}
	return filepath.Join(append([]string{root}, p...)...)
}

// OnlineCPUs onlines offline CPUs until at least want are online, retrying
// while hot-added CPUs are still appearing, and returns how many are online.
// It fails with context.DeadlineExceeded (wrapped) when fewer than want
// are online after CPUTimeout.
func (o *Onliner) OnlineCPUs(ctx context.Context, want int) (int, error) {
	timeout := o.CPUTimeout
	if timeout <= 0 {
		timeout = DefaultCPUTimeout
	}
	possible, err := o.count("devices/system/cpu/possible")
	if err != nil {
		return 0, err
	}
	if want > possible {
		return 0, fmt.Errorf("%d CPUs asked, the guest can have at most %d: %w", want, possible, ErrInvalid)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var lastErr error
	for {
		n, err := o.OnlineCount()
		if err != nil {
			return 0, err
		}
		if n >= want {
			return n, nil
		}
		_, lastErr = onlineOffline(o.path("devices/system/cpu"), cpuDir(), want-n)
		if n, err := o.OnlineCount(); err == nil && n >= want {
			return n, nil
		}
		select {
		case <-ctx.Done():
			n, _ := o.OnlineCount()
			if lastErr != nil {
				return n, fmt.Errorf("unable to online %d CPU(s), %d online after %v (last error: %v): %w", want, n, timeout, lastErr, ctx.Err())
			}
			return n, fmt.Errorf("unable to online %d CPU(s), %d online after %v: %w", want, n, timeout, ctx.Err())
		case <-time.After(retryInterval):
		}
	}
}

// OnlineCount returns the number of online CPUs
// (/sys/devices/system/cpu/online).
func (o *Onliner) OnlineCount() (int, error) {
	return o.count("devices/system/cpu/online")
}

// count counts the CPUs of a cpulist file.
func (o *Onliner) count(file string) (int, error) {
	data, err := os.ReadFile(o.path(file))
	if err != nil {
		return 0, fmt.Errorf("unable to read %s: %w", file, err)
	}
	return CountCPUList(strings.TrimSpace(string(data)))
}

// OnlineMemory onlines every offline memory block and returns how many it
// onlined. With autoOnline it also tells the kernel to online blocks that
// are hot-added later (memory/auto_online_blocks), which closes the race
// between a DIMM's ACPI processing and the runtime's OnlineCPUMem call.
func (o *Onliner) OnlineMemory(autoOnline bool) (int, error) {
	dir := o.path("devices/system/memory")
	if _, err := os.Stat(dir); err != nil {
		return 0, fmt.Errorf("memory blocks (%s): %w", dir, ErrUnsupported)
	}
	if autoOnline {
		// Absent on kernels without memory hotplug; a failure only loses
		// the late-block convenience, the blocks present now are onlined
		// below either way.
		_ = os.WriteFile(filepath.Join(dir, "auto_online_blocks"), []byte("online"), 0)
	}
	return onlineOffline(dir, memoryDir(), -1)
}

// onlineOffline writes 1 to the online file of up to max (all when < 0)
// offline entries of dir matching re, and returns how many it onlined and
// the last error seen.
func onlineOffline(dir string, re *regexp.Regexp, max int) (int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	count := 0
	var errs []error
	for _, e := range entries {
		if max >= 0 && count >= max {
			break
		}
		if !re.MatchString(e.Name()) {
			continue
		}
		p := filepath.Join(dir, e.Name(), "online")
		data, err := os.ReadFile(p)
		if err != nil || strings.TrimSpace(string(data)) != "0" {
			continue // cpu0 has no online file; already online
		}
		if err := os.WriteFile(p, []byte("1"), 0); err != nil {
			errs = append(errs, fmt.Errorf("unable to online %s: %w", e.Name(), err))
			continue
		}
		count++
	}
	return count, errors.Join(errs...)
}

// Probe tells the kernel about memory at the given physical addresses
// (memory/probe, CONFIG_ARCH_MEMORY_PROBE); each write adds one memory
// block, which comes up offline (OnlineMemory onlines it). Every address
// must be aligned to the block size (memory/block_size_bytes), which is
// checked for all of them before anything is written. An address whose
// block the kernel already has (memory/memoryN, N = addr / block size) is
// skipped, so a runtime that retries after a lost answer does not fail on
// the kernel's EEXIST.
func (o *Onliner) Probe(addrs []uint64) error {
	p := o.path("devices/system/memory/probe")
	if _, err := os.Stat(p); err != nil {
		return fmt.Errorf("%s (CONFIG_ARCH_MEMORY_PROBE): %w", p, ErrUnsupported)
	}
	block, err := o.BlockSize()
	if err != nil {
		return err
	}
	for i, a := range addrs {
		if a%block != 0 {
			return fmt.Errorf("memHotplugProbeAddr[%d] %#x: not aligned to the memory block size %#x: %w", i, a, block, ErrInvalid)
		}
	}
	for i, a := range addrs {
		if _, err := os.Stat(o.path("devices/system/memory", "memory"+strconv.FormatUint(a/block, 10))); err == nil {
			continue
		}
		if err := os.WriteFile(p, []byte("0x"+strconv.FormatUint(a, 16)), 0); err != nil {
			if errors.Is(err, syscall.EINVAL) {
				// Not memory the kernel can add (beyond its physical
				// address space, overlapping a non-RAM resource).
				return fmt.Errorf("memHotplugProbeAddr[%d] %#x: unable to probe: %w (%w)", i, a, err, ErrInvalid)
			}
			return fmt.Errorf("memHotplugProbeAddr[%d] %#x: unable to probe: %w", i, a, err)
		}
	}
	return nil
}

// BlockSize returns the guest's memory block size in bytes
// (memory/block_size_bytes, hexadecimal without 0x).
func (o *Onliner) BlockSize() (uint64, error) {
	data, err := os.ReadFile(o.path("devices/system/memory/block_size_bytes"))
	if err != nil {
		return 0, fmt.Errorf("unable to read the memory block size: %w", err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(data)), 16, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("bad memory block size %q", strings.TrimSpace(string(data)))
	}
	return n, nil
}

// CountCPUList counts the CPUs of a kernel cpulist such as "0-3,5,7-8".
func CountCPUList(s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	n := 0
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return 0, fmt.Errorf("bad cpulist %q", s)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return 0, fmt.Errorf("bad cpulist %q", s)
			}
		}
		n += b - a + 1
	}
	return n, nil
}
