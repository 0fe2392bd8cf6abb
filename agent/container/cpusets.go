package container

import (
	"fmt"
	"os"

	"github.com/keelvm/keel/agent/cpuset"
	"github.com/opencontainers/cgroups"
)

// onlineCPUsFile lists the CPUs the guest runs on.
const onlineCPUsFile = "/sys/devices/system/cpu/online"

// RefreshCPUSets brings the cgroup v1 cpusets of every live container (and
// their parents) up to the online CPUs after hot-added CPUs came online
// (see agent/cpuset): a container keeps the cpus its spec or a later
// UpdateContainer asked for, the others get every online CPU. On cgroup
// v2, or without a v1 cpuset hierarchy, there is nothing to do.
func (s *Sandbox) RefreshCPUSets() error {
	if cgroups.IsCgroup2UnifiedMode() {
		return nil
	}
	root, err := cgroups.FindCgroupMountpoint("", "cpuset")
	if err != nil {
		return nil // no cpuset controller mounted: CPUs are not limited
	}
	online, err := os.ReadFile(onlineCPUsFile)
	if err != nil {
		return fmt.Errorf("unable to read the online CPUs: %w", err)
	}
	s.mu.Lock()
	cs := make([]*Container, 0, len(s.containers))
	for _, c := range s.containers {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	var targets []cpuset.Target
	for _, c := range cs {
		if t, ok := c.cpusetTarget(); ok {
			targets = append(targets, t)
		}
	}
	return cpuset.Refresh(root, string(online), targets)
}

// cpusetTarget returns the container's cpuset cgroup and the cpus its
// configuration asks for; false for a stopped or removed container, or one
// without a cpuset cgroup.
func (c *Container) cpusetTarget() (cpuset.Target, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == StateStopped || c.state == StateRemoved {
		return cpuset.Target{}, false
	}
	st, err := c.lc.State()
	if err != nil || st.CgroupPaths["cpuset"] == "" {
		return cpuset.Target{}, false
	}
	cpus := ""
	if cfg := c.lc.Config(); cfg.Cgroups != nil && cfg.Cgroups.Resources != nil {
		cpus = cfg.Cgroups.Resources.CpusetCpus
	}
	return cpuset.Target{Path: st.CgroupPaths["cpuset"], CPUs: cpus}, true
}
