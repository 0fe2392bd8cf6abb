package ociconv

import (
	"fmt"
	"math"
	"os"

	pb "github.com/keelvm/keel/protocol/grpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Kata's oci.proto is proto3: an unset scalar reads as 0. Where the
// runtime-spec has an optional (pointer) field, 0 therefore means "unset"
// (memory limits, CPU shares/quota/period, pids limit, blkio weights,
// classid), as in Kata's own conversion. The exceptions, where 0 is a
// meaningful value the host cannot avoid sending, are documented inline.
// Fields the proto does not carry (scheduler, I/O priority, personality,
// time offsets, rdma, unified) stay unset; memory.kernel is dropped (cgroup
// v2 has no kernel memory limit and runc ignores it). linux.intelRdt is dropped by
// ToConfig (no resctrl in a guest).

func ptrNZ[T comparable](v T) *T {
	var zero T
	if v == zero {
		return nil
	}
	return &v
}

// FromPB converts Kata's pb.Spec into a runtime-spec Spec. It checks only
// what the conversion itself needs; Validate/ToConfig check the rest.
func FromPB(p *pb.Spec) (*specs.Spec, error) {
	if p == nil {
		return nil, invalid("OCI", "spec must be set")
	}
	s := &specs.Spec{Version: p.Version, Hostname: p.Hostname, Annotations: p.Annotations}
	if s.Version == "" {
		s.Version = specs.Version
	}
	if p.Process != nil {
		proc, err := ProcessFromPB(p.Process, "OCI.process")
		if err != nil {
			return nil, err
		}
		s.Process = proc
	}
	if p.Root != nil {
		s.Root = &specs.Root{Path: p.Root.Path, Readonly: p.Root.Readonly}
	}
	for _, m := range p.Mounts {
		if m == nil {
			continue
		}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: m.Destination, Source: m.Source, Type: m.Type, Options: m.Options})
	}
	if p.Hooks != nil {
		h, err := hooksFromPB(p.Hooks)
		if err != nil {
			return nil, err
		}
		s.Hooks = h
	}
	if p.Linux != nil {
		l, err := linuxFromPB(p.Linux)
		if err != nil {
			return nil, err
		}
		s.Linux = l
	}
	return s, nil
}

// ProcessFromPB converts a pb.Process (CreateContainer's OCI.process or
// ExecProcess's process); field prefixes error messages.
func ProcessFromPB(p *pb.Process, field string) (*specs.Process, error) {
	if p == nil {
		return nil, invalid(field, "must be set")
	}
	sp := &specs.Process{
		Terminal:        p.Terminal,
		Args:            p.Args,
		Env:             p.Env,
		Cwd:             p.Cwd,
		NoNewPrivileges: p.NoNewPrivileges,
		ApparmorProfile: p.ApparmorProfile,
		SelinuxLabel:    p.SelinuxLabel,
	}
	if p.ConsoleSize != nil {
		sp.ConsoleSize = &specs.Box{Height: uint(p.ConsoleSize.Height), Width: uint(p.ConsoleSize.Width)}
	}
	if p.User != nil {
		sp.User = specs.User{UID: p.User.UID, GID: p.User.GID, AdditionalGids: p.User.AdditionalGids, Username: p.User.Username}
	}
	if c := p.Capabilities; c != nil {
		sp.Capabilities = &specs.LinuxCapabilities{Bounding: c.Bounding, Effective: c.Effective, Inheritable: c.Inheritable, Permitted: c.Permitted, Ambient: c.Ambient}
	}
	for i, r := range p.Rlimits {
		if r == nil {
			return nil, invalid(fmt.Sprintf("%s.rlimits[%d]", field, i), "must be set")
		}
		sp.Rlimits = append(sp.Rlimits, specs.POSIXRlimit{Type: r.Type, Hard: r.Hard, Soft: r.Soft})
	}
	// Always set oom_score_adj, 0 when the spec leaves it unset (proto3
	// cannot tell the two apart): container processes descend from the
	// agent, which protects itself with -997 as PID 1, and would inherit
	// that protection otherwise.
	if p.OOMScoreAdj < -1000 || p.OOMScoreAdj > 1000 {
		return nil, invalid(field+".oom_score_adj", "%d out of range [-1000, 1000]", p.OOMScoreAdj)
	}
	v := int(p.OOMScoreAdj)
	sp.OOMScoreAdj = &v
	return sp, nil
}

func hooksFromPB(h *pb.Hooks) (*specs.Hooks, error) {
	conv := func(name string, in []*pb.Hook) ([]specs.Hook, error) {
		var out []specs.Hook
		for i, x := range in {
			if x == nil {
				return nil, invalid(fmt.Sprintf("OCI.hooks.%s[%d]", name, i), "must be set")
			}
			hk := specs.Hook{Path: x.Path, Args: x.Args, Env: x.Env}
			if x.Timeout != 0 {
				if x.Timeout < 0 || x.Timeout > math.MaxInt32 {
					return nil, invalid(fmt.Sprintf("OCI.hooks.%s[%d].timeout", name, i), "%d out of range", x.Timeout)
				}
				t := int(x.Timeout)
				hk.Timeout = &t
			}
			out = append(out, hk)
		}
		return out, nil
	}
	out := &specs.Hooks{}
	var err error
	for _, f := range []struct {
		name string
		in   []*pb.Hook
		out  *[]specs.Hook
	}{
		//lint:ignore SA1019 deprecated in the runtime-spec, but Kata still carries it
		{"prestart", h.Prestart, &out.Prestart},
		{"poststart", h.Poststart, &out.Poststart},
		{"poststop", h.Poststop, &out.Poststop},
		{"createRuntime", h.CreateRuntime, &out.CreateRuntime},
		{"createContainer", h.CreateContainer, &out.CreateContainer},
		{"startContainer", h.StartContainer, &out.StartContainer},
	} {
		if *f.out, err = conv(f.name, f.in); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func linuxFromPB(l *pb.Linux) (*specs.Linux, error) {
	out := &specs.Linux{
		Sysctl:            l.Sysctl,
		CgroupsPath:       l.CgroupsPath,
		RootfsPropagation: l.RootfsPropagation,
		MaskedPaths:       l.MaskedPaths,
		ReadonlyPaths:     l.ReadonlyPaths,
		MountLabel:        l.MountLabel,
	}
	for i, m := range l.UIDMappings {
		if m == nil {
			return nil, invalid(fmt.Sprintf("OCI.linux.uidMappings[%d]", i), "must be set")
		}
		out.UIDMappings = append(out.UIDMappings, specs.LinuxIDMapping{HostID: m.HostID, ContainerID: m.ContainerID, Size: m.Size})
	}
	for i, m := range l.GIDMappings {
		if m == nil {
			return nil, invalid(fmt.Sprintf("OCI.linux.gidMappings[%d]", i), "must be set")
		}
		out.GIDMappings = append(out.GIDMappings, specs.LinuxIDMapping{HostID: m.HostID, ContainerID: m.ContainerID, Size: m.Size})
	}
	for i, n := range l.Namespaces {
		if n == nil {
			return nil, invalid(fmt.Sprintf("OCI.linux.namespaces[%d]", i), "must be set")
		}
		out.Namespaces = append(out.Namespaces, specs.LinuxNamespace{Type: specs.LinuxNamespaceType(n.Type), Path: n.Path})
	}
	for i, d := range l.Devices {
		if d == nil {
			return nil, invalid(fmt.Sprintf("OCI.linux.devices[%d]", i), "must be set")
		}
		dev := specs.LinuxDevice{Path: d.Path, Type: d.Type, Major: d.Major, Minor: d.Minor}
		// file_mode, uid and gid 0 mean "unset" (specconv then uses
		// 0666 and root), as in Kata.
		if d.FileMode != 0 {
			fm := os.FileMode(d.FileMode)
			dev.FileMode = &fm
		}
		dev.UID, dev.GID = ptrNZ(d.UID), ptrNZ(d.GID)
		out.Devices = append(out.Devices, dev)
	}
	if l.Resources != nil {
		r, err := ResourcesFromPB(l.Resources, "OCI.linux.resources")
		if err != nil {
			return nil, err
		}
		out.Resources = r
	}
	if l.Seccomp != nil {
		sc, err := seccompFromPB(l.Seccomp)
		if err != nil {
			return nil, err
		}
		out.Seccomp = sc
	}
	if l.IntelRdt != nil {
		out.IntelRdt = &specs.LinuxIntelRdt{L3CacheSchema: l.IntelRdt.L3CacheSchema}
	}
	return out, nil
}

// ResourcesFromPB converts cgroup resources (CreateContainer's and
// UpdateContainer's).
func ResourcesFromPB(r *pb.LinuxResources, field string) (*specs.LinuxResources, error) {
	if r == nil {
		return nil, invalid(field, "must be set")
	}
	out := &specs.LinuxResources{}
	for i, d := range r.Devices {
		if d == nil {
			return nil, invalid(fmt.Sprintf("%s.devices[%d]", field, i), "must be set")
		}
		// Major/minor -1 is the wildcard in Kata's encoding (as in the
		// OCI JSON where it is omitted).
		dc := specs.LinuxDeviceCgroup{Allow: d.Allow, Type: d.Type, Access: d.Access}
		if d.Major != -1 {
			m := d.Major
			dc.Major = &m
		}
		if d.Minor != -1 {
			m := d.Minor
			dc.Minor = &m
		}
		out.Devices = append(out.Devices, dc)
	}
	if m := r.Memory; m != nil {
		out.Memory = &specs.LinuxMemory{
			Limit: ptrNZ(m.Limit), Reservation: ptrNZ(m.Reservation), Swap: ptrNZ(m.Swap),
			KernelTCP: ptrNZ(m.KernelTCP), Swappiness: ptrNZ(m.Swappiness),
			DisableOOMKiller: ptrNZ(m.DisableOOMKiller),
		}
		if m.Swappiness > 100 {
			return nil, invalid(field+".memory.swappiness", "%d out of range [0, 100]", m.Swappiness)
		}
	}
	if c := r.CPU; c != nil {
		out.CPU = &specs.LinuxCPU{
			Shares: ptrNZ(c.Shares), Quota: ptrNZ(c.Quota), Period: ptrNZ(c.Period),
			RealtimeRuntime: ptrNZ(c.RealtimeRuntime), RealtimePeriod: ptrNZ(c.RealtimePeriod),
			Cpus: c.Cpus, Mems: c.Mems,
		}
	}
	if p := r.Pids; p != nil {
		out.Pids = &specs.LinuxPids{Limit: ptrNZ(p.Limit)}
	}
	if b := r.BlockIO; b != nil {
		bio := &specs.LinuxBlockIO{}
		w16 := func(f string, v uint32) (*uint16, error) {
			if v > math.MaxUint16 {
				return nil, invalid(f, "%d out of range", v)
			}
			return ptrNZ(uint16(v)), nil
		}
		var err error
		if bio.Weight, err = w16(field+".blockIO.weight", b.Weight); err != nil {
			return nil, err
		}
		if bio.LeafWeight, err = w16(field+".blockIO.leafWeight", b.LeafWeight); err != nil {
			return nil, err
		}
		for i, d := range b.WeightDevice {
			if d == nil {
				return nil, invalid(fmt.Sprintf("%s.blockIO.weightDevice[%d]", field, i), "must be set")
			}
			wd := specs.LinuxWeightDevice{}
			wd.Major, wd.Minor = d.Major, d.Minor
			if wd.Weight, err = w16(fmt.Sprintf("%s.blockIO.weightDevice[%d].weight", field, i), d.Weight); err != nil {
				return nil, err
			}
			if wd.LeafWeight, err = w16(fmt.Sprintf("%s.blockIO.weightDevice[%d].leafWeight", field, i), d.LeafWeight); err != nil {
				return nil, err
			}
			bio.WeightDevice = append(bio.WeightDevice, wd)
		}
		thr := func(name string, in []*pb.LinuxThrottleDevice) ([]specs.LinuxThrottleDevice, error) {
			var o []specs.LinuxThrottleDevice
			for i, d := range in {
				if d == nil {
					return nil, invalid(fmt.Sprintf("%s.blockIO.%s[%d]", field, name, i), "must be set")
				}
				td := specs.LinuxThrottleDevice{Rate: d.Rate}
				td.Major, td.Minor = d.Major, d.Minor
				o = append(o, td)
			}
			return o, nil
		}
		if bio.ThrottleReadBpsDevice, err = thr("throttleReadBpsDevice", b.ThrottleReadBpsDevice); err != nil {
			return nil, err
		}
		if bio.ThrottleWriteBpsDevice, err = thr("throttleWriteBpsDevice", b.ThrottleWriteBpsDevice); err != nil {
			return nil, err
		}
		if bio.ThrottleReadIOPSDevice, err = thr("throttleReadIOPSDevice", b.ThrottleReadIOPSDevice); err != nil {
			return nil, err
		}
		if bio.ThrottleWriteIOPSDevice, err = thr("throttleWriteIOPSDevice", b.ThrottleWriteIOPSDevice); err != nil {
			return nil, err
		}
		out.BlockIO = bio
	}
	for i, h := range r.HugepageLimits {
		if h == nil {
			return nil, invalid(fmt.Sprintf("%s.hugepageLimits[%d]", field, i), "must be set")
		}
		out.HugepageLimits = append(out.HugepageLimits, specs.LinuxHugepageLimit{Pagesize: h.Pagesize, Limit: h.Limit})
	}
	if n := r.Network; n != nil {
		net := &specs.LinuxNetwork{ClassID: ptrNZ(n.ClassID)}
		for i, p := range n.Priorities {
			if p == nil {
				return nil, invalid(fmt.Sprintf("%s.network.priorities[%d]", field, i), "must be set")
			}
			net.Priorities = append(net.Priorities, specs.LinuxInterfacePriority{Name: p.Name, Priority: p.Priority})
		}
		out.Network = net
	}
	return out, nil
}

func seccompFromPB(s *pb.LinuxSeccomp) (*specs.LinuxSeccomp, error) {
	out := &specs.LinuxSeccomp{DefaultAction: specs.LinuxSeccompAction(s.DefaultAction)}
	for _, a := range s.Architectures {
		out.Architectures = append(out.Architectures, specs.Arch(a))
	}
	for _, f := range s.Flags {
		out.Flags = append(out.Flags, specs.LinuxSeccompFlag(f))
	}
	for i, sc := range s.Syscalls {
		if sc == nil {
			return nil, invalid(fmt.Sprintf("OCI.linux.seccomp.syscalls[%d]", i), "must be set")
		}
		o := specs.LinuxSyscall{Names: sc.Names, Action: specs.LinuxSeccompAction(sc.Action)}
		if e, ok := sc.ErrnoRet.(*pb.LinuxSyscall_Errnoret); ok {
			v := uint(e.Errnoret)
			o.ErrnoRet = &v
		}
		for j, a := range sc.Args {
			if a == nil {
				return nil, invalid(fmt.Sprintf("OCI.linux.seccomp.syscalls[%d].args[%d]", i, j), "must be set")
			}
			o.Args = append(o.Args, specs.LinuxSeccompArg{Index: uint(a.Index), Value: a.Value, ValueTwo: a.ValueTwo, Op: specs.LinuxSeccompOperator(a.Op)})
		}
		out.Syscalls = append(out.Syscalls, o)
	}
	return out, nil
}
