package uevent

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// DefaultSysfs is where sysfs is mounted.
const DefaultSysfs = "/sys"

// FromSysfs reads the device at devpath (relative to the sysfs mount
// point sysfs, as in DEVPATH) back as the "add" event that announced it:
// its uevent file holds the same variables (MAJOR, MINOR, DEVNAME,
// DEVTYPE, DRIVER, INTERFACE...), its subsystem link names SUBSYSTEM.
func FromSysfs(sysfs, devpath string) (Event, error) {
	if !strings.HasPrefix(devpath, "/") || path.Clean(devpath) != devpath {
		return Event{}, fmt.Errorf("devpath %q: want a clean absolute path", devpath)
	}
	dir := filepath.Join(sysfs, devpath)
	data, err := os.ReadFile(filepath.Join(dir, "uevent"))
	if err != nil {
		return Event{}, fmt.Errorf("unable to read the uevent of %s: %w", devpath, err)
	}
	if len(data) > MaxMessage {
		return Event{}, fmt.Errorf("%w: %s/uevent has %d bytes", errBadMessage, devpath, len(data))
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte{'\n'})
	if len(lines) == 1 && len(lines[0]) == 0 {
		lines = nil
	}
	if len(lines) > MaxVars {
		return Event{}, fmt.Errorf("%w: %s/uevent has %d variables", errBadMessage, devpath, len(lines))
	}
	if sub, err := os.Readlink(filepath.Join(dir, "subsystem")); err == nil {
		lines = append(lines, []byte("SUBSYSTEM="+filepath.Base(sub)))
	}
	lines = append(lines, []byte("ACTION="+ActionAdd), []byte("DEVPATH="+devpath))
	return fromVars(lines)
}

// Glob lists the devpaths (relative to sysfs) matching pattern, a
// filepath.Match pattern relative to sysfs: a helper for Matcher.Present.
func Glob(sysfs, pattern string) []string {
	matches, _ := filepath.Glob(filepath.Join(sysfs, pattern))
	out := make([]string, 0, len(matches))
	for _, m := range matches {
		if rel, err := filepath.Rel(sysfs, m); err == nil {
			out = append(out, "/"+rel)
		}
	}
	return out
}

// ByName matches the device of class subsystem ("block", "net") named
// name (its DEVNAME for block devices, INTERFACE for net): e.g. /dev/vdb
// of an MMIO disk, /dev/pmem0 of an nvdimm, a SCSI disk once resolved.
func ByName(subsystem, name string) Matcher {
	return Matcher{
		What: fmt.Sprintf("%s device %q", subsystem, name),
		Match: func(ev *Event) bool {
			if ev.Subsystem != subsystem || (ev.Action != ActionAdd && ev.Action != ActionBind) {
				return false
			}
			return ev.DevName == name || (subsystem == "net" && ev.Interface == name)
		},
		Present: func(sysfs string) []string {
			if name == "" || strings.ContainsAny(name, "/") || name == "." || name == ".." {
				return nil
			}
			return devpathOf(sysfs, filepath.Join("class", subsystem, name))
		},
	}
}

// devpathOf resolves link (a symlink relative to sysfs, like
// class/block/vda or dev/block/254:0) to the devpath it points at, or
// nothing if it is missing or leads out of sysfs.
func devpathOf(sysfs, link string) []string {
	real, err := filepath.EvalSymlinks(filepath.Join(sysfs, link))
	if err != nil {
		return nil
	}
	root, err := filepath.EvalSymlinks(sysfs)
	if err != nil {
		return nil
	}
	rel, err := filepath.Rel(root, real)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return nil
	}
	return []string{"/" + rel}
}

// BlockNode matches the block device whose node is devDir/name (a "blk"
// storage whose source is a /dev path): the disk the kernel names name
// (DEVNAME, the name devtmpfs gives its node), or, while a block node is
// at that path, the disk with the node's numbers (a node the runtime
// named some other way). Waiting on it rather than taking the node as it
// is puts the disk through the registry's readiness check (devReady): a
// hot-plugged disk's node is in /dev before the disk can be opened.
// name must be clean and relative (no ".."); otherwise nothing matches.
func BlockNode(devDir, name string) Matcher {
	node := filepath.Join(devDir, name)
	bad := name == "" || filepath.IsAbs(name) || filepath.Clean(name) != name || name == ".." || strings.HasPrefix(name, "../")
	// The node's numbers, compared by Match on the listener's goroutine:
	// MAJOR<<32|MINOR + 1, 0 while no block node was seen. They are read
	// here, before Wait registers the waiter, so that a uevent matching
	// only by numbers is not dropped in the gap before the first Present,
	// and Present keeps them fresh (the runtime may make the node later).
	var seen atomic.Uint64
	blockNumbers := func() (major, minor uint64, ok bool) {
		var st unix.Stat_t
		if bad || unix.Stat(node, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
			return 0, 0, false
		}
		major, minor = uint64(unix.Major(st.Rdev)), uint64(unix.Minor(st.Rdev))
		seen.Store(major<<32 | minor + 1)
		return major, minor, true
	}
	blockNumbers()
	return Matcher{
		What: fmt.Sprintf("block device %s", node),
		Match: func(ev *Event) bool {
			if bad || ev.Subsystem != "block" || ev.Action != ActionAdd {
				return false
			}
			if ev.DevName == name {
				return true
			}
			n := seen.Load()
			if n == 0 {
				return false
			}
			major, err1 := strconv.ParseUint(ev.Major, 10, 32)
			minor, err2 := strconv.ParseUint(ev.Minor, 10, 32)
			return err1 == nil && err2 == nil && major<<32|minor == n-1
		},
		Present: func(sysfs string) []string {
			if bad {
				return nil
			}
			var out []string
			if major, minor, ok := blockNumbers(); ok {
				out = devpathOf(sysfs, fmt.Sprintf("dev/block/%d:%d", major, minor))
			}
			if !strings.Contains(name, "/") {
				if dp := devpathOf(sysfs, filepath.Join("class/block", name)); len(dp) == 1 && (len(out) == 0 || out[0] != dp[0]) {
					out = append(out, dp[0])
				}
			}
			return out
		},
	}
}
