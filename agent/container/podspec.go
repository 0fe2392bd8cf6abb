package container

import (
	"fmt"
	"log/slog"
	"slices"

	"github.com/keelvm/keel/agent/podns"
	specs "github.com/opencontainers/runtime-spec/specs-go"
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
// namespace is always there. The first container with a new pid namespace
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
