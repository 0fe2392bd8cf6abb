package uevent

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
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
			real, err := filepath.EvalSymlinks(filepath.Join(sysfs, "class", subsystem, name))
			if err != nil {
				return nil
			}
			root, err := filepath.EvalSymlinks(sysfs)
			if err != nil {
				return nil
			}
			rel, err := filepath.Rel(root, real)
			if err != nil || strings.HasPrefix(rel, "..") {
				return nil
			}
			return []string{"/" + rel}
		},
	}
}
