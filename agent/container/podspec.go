package container

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/keelvm/keel/agent/podns"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Namespace kinds a container must never share with the agent: in the
// agent's mount or pid namespace a container sees and reaches the guest's
// own processes and files; in its IPC or UTS namespace it shares the
// agent's SysV objects and hostname instead of the pod's. The network,
// cgroup, user and time namespaces of the agent are the pod's (Kata's
// runtime strips them from every spec, so containers stay in the agent's),
// so naming them is allowed.
var agentPrivate = []specs.LinuxNamespaceType{specs.PIDNamespace, specs.MountNamespace, specs.IPCNamespace, specs.UTSNamespace}

// checkNamespacePaths checks every namespace path of the spec as given: it
// must be a namespace file of the entry's type and, for agentPrivate kinds,
// not one of the agent's own namespaces, whatever path names it.
func checkNamespacePaths(spec *specs.Spec) error {
	if spec.Linux == nil {
		return nil
	}
	for i, n := range spec.Linux.Namespaces {
		if n.Path == "" {
			continue
		}
		field := fmt.Sprintf("OCI.linux.namespaces[%d].path", i)
		agents, err := podns.Is(string(n.Type), n.Path)
		if err != nil {
			return fmt.Errorf("%s: %v: %w", field, err, ErrInvalid)
		}
		if agents && slices.Contains(agentPrivate, n.Type) {
			return fmt.Errorf("%s %q: names the agent's own %s namespace; a container never shares it: %w", field, n.Path, n.Type, ErrInvalid)
		}
	}
	return nil
}

// podNamespaces is what a container joins, from the sandbox.
type podNamespaces struct {
	ipc, uts string     // pinned paths; "" before CreateSandbox
	pid      string     // pinned pid namespace of the holder; "" when none
	holder   *Container // first container, whose pid namespace is the pod's
	// cgroupNS adds a cgroup namespace to a spec without one, as Kata's
	// agent does on a cgroup v2 (unified) guest: the container then sees
	// its own cgroup as the root, not the guest's whole tree.
	cgroupNS bool
}

// nsPlan is the outcome of setNamespaces.
type nsPlan struct {
	privatePid    bool // the container gets a new pid namespace
	becomesHolder bool // ... and it becomes the sandbox's
}

// setNamespaces rewrites spec's namespaces as Kata's agent does
// (update_container_namespaces): the IPC and UTS entries join the
// sandbox's (added when missing, so no container stays in the agent's);
// with sandboxPidns the pid namespace is the sandbox's, else a new one
// even when the spec has none (Kata's runtime strips it); a mount
// namespace is always there, and a cgroup namespace on cgroup v2. The
// first container with a new pid namespace
// becomes the holder of the sandbox's. A spec hostname cannot change the
// pod's shared UTS namespace and is dropped, as Kata's agent sets it only
// in a new UTS namespace.
func setNamespaces(spec *specs.Spec, pod podNamespaces, sandboxPidns bool, log *slog.Logger) (nsPlan, error) {
	var plan nsPlan
	l := spec.Linux
	set := func(t specs.LinuxNamespaceType, path string) {
		for i := range l.Namespaces {
			if l.Namespaces[i].Type == t {
				l.Namespaces[i].Path = path
				return
			}
		}
		l.Namespaces = append(l.Namespaces, specs.LinuxNamespace{Type: t, Path: path})
	}
	find := func(t specs.LinuxNamespaceType) *specs.LinuxNamespace {
		for i := range l.Namespaces {
			if l.Namespaces[i].Type == t {
				return &l.Namespaces[i]
			}
		}
		return nil
	}
	if pod.ipc != "" {
		set(specs.IPCNamespace, pod.ipc)
	}
	if pod.uts != "" {
		set(specs.UTSNamespace, pod.uts)
		if spec.Hostname != "" {
			log.Debug("spec hostname ignored: the container joins the sandbox's UTS namespace", "hostname", spec.Hostname)
			spec.Hostname = ""
		}
	}
	if find(specs.MountNamespace) == nil {
		set(specs.MountNamespace, "")
	}
	if pod.cgroupNS && find(specs.CgroupNamespace) == nil {
		set(specs.CgroupNamespace, "")
	}
	switch {
	case sandboxPidns && pod.holder != nil:
		if pod.pid == "" || pod.holder.init.State() != ProcessRunning {
			return plan, fmt.Errorf("sandbox_pidns: the sandbox's pid namespace is gone (its first container %q has exited): %w", pod.holder.id, ErrState)
		}
		set(specs.PIDNamespace, pod.pid)
	case sandboxPidns:
		set(specs.PIDNamespace, "")
		plan.privatePid, plan.becomesHolder = true, true
	default:
		if n := find(specs.PIDNamespace); n != nil && n.Path != "" {
			// An explicit pid namespace (checked not to be the agent's).
			break
		}
		set(specs.PIDNamespace, "")
		plan.privatePid, plan.becomesHolder = true, pod.holder == nil
	}
	return plan, nil
}

// hostOnlyFields clears the fields that name host security policies, which
// do not exist in the guest: Kata's agent has no AppArmor support and its
// runtime empties the SELinux labels unless guest SELinux is configured
// (off by default), so a Kata pod never fails on them. It returns the
// names of the fields it cleared, for one log line.
func hostOnlyFields(p *specs.Process, field string, l *specs.Linux) []string {
	var cleared []string
	if p != nil && p.ApparmorProfile != "" {
		cleared = append(cleared, field+".apparmorProfile")
		p.ApparmorProfile = ""
	}
	if p != nil && p.SelinuxLabel != "" {
		cleared = append(cleared, field+".selinuxLabel")
		p.SelinuxLabel = ""
	}
	if l != nil && l.MountLabel != "" {
		cleared = append(cleared, "OCI.linux.mountLabel")
		l.MountLabel = ""
	}
	return cleared
}

// podNetSysctls applies the net.* sysctls of a container that stays in the
// agent's network namespace (no network entry, or a path naming the
// agent's) to that namespace and drops them from the spec: libcontainer
// refuses them there, while Kata's agent writes them (containerd 2 sets
// net.ipv4.ip_unprivileged_port_start and ping_group_range on every pause
// container, whose network namespace Kata's runtime strips). The returned
// netSysctls put the previous values back should the create fail later;
// on error, what was written is restored already.
func (s *Sandbox) podNetSysctls(id string, spec *specs.Spec) (_ *netSysctls, retErr error) {
	var keys []string
	for k := range spec.Linux.Sysctl {
		if strings.HasPrefix(k, "net.") || strings.HasPrefix(k, "net/") {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, nil
	}
	for _, n := range spec.Linux.Namespaces {
		if n.Type != specs.NetworkNamespace {
			continue
		}
		if n.Path == "" {
			return nil, nil // its own: libcontainer applies them
		}
		if agents, err := podns.Is(string(n.Type), n.Path); err != nil || !agents {
			return nil, nil // another namespace: libcontainer's
		}
	}
	sort.Strings(keys)
	applied := &netSysctls{log: s.log}
	defer func() {
		if retErr != nil {
			applied.restore()
		}
	}()
	for _, k := range keys {
		field := fmt.Sprintf("OCI.linux.sysctl[%q]", k)
		if !s.cfg.PodNetSysctls {
			return nil, fmt.Errorf("%s: the container has no network namespace of its own and the agent's is not a pod's here (host mode): %w", field, ErrInvalid)
		}
		rel := strings.ReplaceAll(k, ".", "/")
		if strings.Contains(k, "/") {
			rel = k
		}
		if slices.Contains(strings.Split(rel, "/"), "..") || strings.ContainsRune(rel, 0) {
			return nil, fmt.Errorf("%s: not a sysctl name: %w", field, ErrInvalid)
		}
		if err := applied.set(filepath.Join("/proc/sys", rel), spec.Linux.Sysctl[k]); err != nil {
			return nil, fmt.Errorf("%s %q: unable to set it in the pod's network namespace: %v: %w", field, spec.Linux.Sysctl[k], err, ErrInvalid)
		}
		delete(spec.Linux.Sysctl, k)
	}
	s.log.Info("net sysctls applied to the pod's network namespace", "container_id", id, "sysctls", keys)
	return applied, nil
}

// netSysctls are sysctls a create wrote, each with its previous value, the
// value read back after the write and the handle it was written through:
// the handle stays bound to the network namespace it was opened in,
// whichever thread restores it.
type netSysctls struct {
	log   *slog.Logger
	files []*os.File
	prev  [][]byte
	wrote [][]byte // as read back after the write
}

// set reads path's value, then writes v to it and reads back what the
// kernel holds now.
func (n *netSysctls) set(path, v string) error {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	prev, err := readSysctl(f)
	if err != nil {
		f.Close()
		return err
	}
	if _, err := f.WriteAt([]byte(v), 0); err != nil {
		f.Close()
		return err
	}
	wrote, err := readSysctl(f)
	if err != nil {
		// Written but unreadable: restore the previous value anyway.
		wrote = nil
	}
	n.files, n.prev, n.wrote = append(n.files, f), append(n.prev, prev), append(n.wrote, wrote)
	return nil
}

func readSysctl(f *os.File) ([]byte, error) {
	buf := make([]byte, 4096)
	m, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return buf[:m], nil
}

// restore writes the previous values back, last written first (nil:
// none), each only while the sysctl still holds what this create wrote: a
// value set since (another create of the pod that succeeded) is theirs.
func (n *netSysctls) restore() {
	if n == nil {
		return
	}
	for i := len(n.files) - 1; i >= 0; i-- {
		if n.wrote[i] != nil {
			if cur, err := readSysctl(n.files[i]); err != nil || !bytes.Equal(cur, n.wrote[i]) {
				n.log.Info("pod net sysctl changed since this create wrote it: left as is", "path", n.files[i].Name())
				continue
			}
		}
		if _, err := n.files[i].WriteAt(n.prev[i], 0); err != nil {
			n.log.Warn("unable to restore a pod net sysctl", "path", n.files[i].Name(), "err", err)
		}
	}
	n.keep()
}

// keep lets the values stand and closes the handles (nil: none).
func (n *netSysctls) keep() {
	if n == nil {
		return
	}
	for _, f := range n.files {
		f.Close()
	}
	n.files, n.prev, n.wrote = nil, nil, nil
}
