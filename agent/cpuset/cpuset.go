// Package cpuset brings containers' cgroup v1 cpusets up to date after
// hot-added CPUs come online (OnlineCPUMem).
//
// On cgroup v1 a cpuset's cpuset.cpus is a fixed list: a container cgroup
// created while the guest had one CPU keeps "0" after the runtime
// hot-added and the agent onlined a second one, and so do its parents
// (runc copies a parent's list into a new child once, at creation). Its
// processes would never run on the new CPU. cgroup v2 needs none of this:
// a cgroup without cpuset.cpus of its own uses its parent's effective
// CPUs, which follow the online ones.
//
// Refresh therefore widens every ancestor between the hierarchy's root and
// a container cgroup to the online CPUs, top down (a child's list must be
// a subset of its parent's), then sets the container's own list: the cpus
// its spec asked for, or all online CPUs when it asked for none. This is
// what Kata's agent does after onlining CPUs, except that it refreshes
// only containers whose spec names cpus, leaving the others pinned to the
// CPUs of their creation.
package cpuset

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Target is one container's cpuset cgroup.
type Target struct {
	// Path is the cgroup's directory in the cpuset hierarchy (absolute,
	// under the hierarchy's root).
	Path string
	// CPUs is the cpus list the container's spec asks for (linux.resources
	// .cpu.cpus); "" means every online CPU.
	CPUs string
}

// Refresh widens the ancestors of each target below root (the cpuset
// hierarchy's mount point) to online (a cpulist such as "0-3") and sets
// each target's cpuset.cpus to its CPUs, or online. It goes on after a
// failed target and returns every error; an ancestor already set to online
// is not written again.
func Refresh(root, online string, targets []Target) error {
	online = strings.TrimSpace(online)
	if online == "" {
		return errors.New("unable to refresh cpusets: no online CPUs given")
	}
	root = filepath.Clean(root)
	done := map[string]bool{} // ancestors already widened
	var errs []error
	for _, t := range targets {
		if err := refreshOne(root, online, t, done); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func refreshOne(root, online string, t Target, done map[string]bool) error {
	rel, err := filepath.Rel(root, filepath.Clean(t.Path))
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") || !filepath.IsAbs(t.Path) {
		return fmt.Errorf("cpuset cgroup %q is not below %s", t.Path, root)
	}
	parts := strings.Split(rel, string(filepath.Separator))
	dir := root
	for _, p := range parts[:len(parts)-1] {
		dir = filepath.Join(dir, p)
		if done[dir] {
			continue
		}
		if err := setCPUs(dir, online); err != nil {
			return err
		}
		done[dir] = true
	}
	want := t.CPUs
	if want == "" {
		want = online
	}
	return setCPUs(t.Path, want)
}

// setCPUs writes cpus to dir/cpuset.cpus unless it already holds them.
func setCPUs(dir, cpus string) error {
	f := filepath.Join(dir, "cpuset.cpus")
	cur, err := os.ReadFile(f)
	if err != nil {
		return fmt.Errorf("unable to read %s: %w", f, err)
	}
	if strings.TrimSpace(string(cur)) == cpus {
		return nil
	}
	if err := os.WriteFile(f, []byte(cpus), 0); err != nil {
		return fmt.Errorf("unable to set %s to %q (was %q): %w", f, cpus, strings.TrimSpace(string(cur)), err)
	}
	return nil
}
