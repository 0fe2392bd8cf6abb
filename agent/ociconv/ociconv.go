// Package ociconv converts container specifications between the wire, the
// OCI runtime-spec and libcontainer: Kata's pb.Spec (oci.proto, a mirror of
// the runtime-spec Go structs) → specs.Spec → configs.Config, the last step
// through runc's specconv. Every function is pure (no file system or
// process state is read beyond what specconv itself reads: the working
// directory for relative root paths, which Keel refuses anyway), so each is
// table-tested and fuzzed. Errors wrap ErrInvalid and name the offending
// field, e.g. `linux.namespaces[2].type "foo": unknown namespace type`.
package ociconv

import (
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/keelvm/keel/agent/errdefs"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ErrInvalid is wrapped by every conversion error: the input is wrong.
var ErrInvalid = errdefs.New(errdefs.ErrInvalidArgument, "invalid argument")

// Options are the agent-side choices that are not part of the spec.
type Options struct {
	// ID is the container id; it names the default cgroup.
	ID string
	// CgroupParent is the cgroup under which containers without
	// linux.cgroupsPath are placed ("/keel" → /keel/<id>).
	CgroupParent string
	// NoPivotRoot makes libcontainer use MS_MOVE+chroot instead of
	// pivot_root, required when the guest's / is an initramfs.
	NoPivotRoot bool
}

func invalid(field string, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %w", field, fmt.Sprintf(format, args...), ErrInvalid)
}

// Clone deep-copies a spec (through JSON, as the spec is plain data).
func Clone(s *specs.Spec) (*specs.Spec, error) {
	if s == nil {
		return nil, nil
	}
	b, err := json.Marshal(s)
	if err != nil {
		return nil, invalid("spec", "%v", err)
	}
	var out specs.Spec
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, invalid("spec", "%v", err)
	}
	return &out, nil
}

// Validate checks what Keel requires of a spec before conversion, with a
// message naming the field. specconv and libcontainer's validator check the
// rest.
func Validate(s *specs.Spec) error {
	if s == nil {
		return invalid("OCI", "spec must be set")
	}
	if s.Root == nil || s.Root.Path == "" {
		return invalid("OCI.root.path", "must be set")
	}
	if !path.IsAbs(s.Root.Path) {
		return invalid("OCI.root.path", "%q must be absolute", s.Root.Path)
	}
	if err := ValidateProcess(s.Process, "OCI.process"); err != nil {
		return err
	}
	for i, m := range s.Mounts {
		if m.Destination == "" || !path.IsAbs(m.Destination) {
			return invalid(fmt.Sprintf("OCI.mounts[%d].destination", i), "%q must be an absolute path", m.Destination)
		}
	}
	if s.Linux != nil {
		known := specconv.KnownNamespaces()
		seen := map[specs.LinuxNamespaceType]bool{}
		for i, ns := range s.Linux.Namespaces {
			f := fmt.Sprintf("OCI.linux.namespaces[%d].type", i)
			if !slices.Contains(known, string(ns.Type)) {
				return invalid(fmt.Sprintf("%s %q", f, ns.Type), "unknown namespace type (known: %s)", strings.Join(known, ", "))
			}
			if seen[ns.Type] {
				return invalid(fmt.Sprintf("%s %q", f, ns.Type), "duplicate namespace")
			}
			seen[ns.Type] = true
			if ns.Path != "" && !path.IsAbs(ns.Path) {
				return invalid(fmt.Sprintf("OCI.linux.namespaces[%d].path", i), "%q must be absolute", ns.Path)
			}
		}
		if p := s.Linux.CgroupsPath; p != "" {
			if _, err := CgroupsPath(p); err != nil {
				return err
			}
		}
	}
	return nil
}

// ValidateProcess checks a process (the container's or an exec's); field
// prefixes the error ("OCI.process", "process").
func ValidateProcess(p *specs.Process, field string) error {
	if p == nil {
		return invalid(field, "must be set")
	}
	if len(p.Args) == 0 || p.Args[0] == "" {
		return invalid(field+".args", "must name a program")
	}
	if p.Cwd == "" || !path.IsAbs(p.Cwd) {
		return invalid(field+".cwd", "%q must be an absolute path", p.Cwd)
	}
	for i, e := range p.Env {
		if !strings.Contains(e, "=") || strings.HasPrefix(e, "=") || strings.ContainsRune(e, 0) {
			return invalid(fmt.Sprintf("%s.env[%d]", field, i), "%q is not KEY=value", e)
		}
	}
	for i, a := range p.Args {
		if strings.ContainsRune(a, 0) {
			return invalid(fmt.Sprintf("%s.args[%d]", field, i), "contains a NUL byte")
		}
	}
	for i, r := range p.Rlimits {
		if !strings.HasPrefix(r.Type, "RLIMIT_") {
			return invalid(fmt.Sprintf("%s.rlimits[%d].type", field, i), "%q is not an RLIMIT_* name", r.Type)
		}
	}
	return nil
}

// ToConfig converts a validated copy of s into a libcontainer config. s is
// not modified.
func ToConfig(s *specs.Spec, o Options) (*configs.Config, error) {
	if err := Validate(s); err != nil {
		return nil, err
	}
	if o.ID == "" {
		return nil, invalid("container_id", "must be set")
	}
	// The two fields set below are set on copies of the Spec and Linux
	// structs: the input stays as it was without a deep copy (a JSON round
	// trip of the whole spec, ~2 ms of a create in the guest under TCG).
	// specconv only reads the spec; the config shares some of its slices
	// and maps, which neither side changes afterwards.
	cs := *s
	c := &cs
	lin := specs.Linux{}
	if s.Linux != nil {
		lin = *s.Linux
	}
	c.Linux = &lin
	var err error
	if c.Linux.CgroupsPath == "" {
		parent := o.CgroupParent
		if parent == "" {
			parent = "/keel"
		}
		c.Linux.CgroupsPath = path.Join(parent, o.ID)
	} else if c.Linux.CgroupsPath, err = CgroupsPath(c.Linux.CgroupsPath); err != nil {
		return nil, err
	}
	// Intel RDT needs resctrl, which a guest does not have: ignored.
	c.Linux.IntelRdt = nil
	cfg, err := convert(c, o)
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// systemdCgroupsPath is the systemd driver's "slice:prefix:name" form of
// linux.cgroupsPath (kubelet's systemd cgroup driver), as Kata's agent
// recognises it.
// Compiled on first use, not at package init (every container init, a
// re-exec of this binary, would pay for it).
var systemdCgroupsPath = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[\w\-.]*:[\w\-.]*:[\w\-.]*$`) })

// CgroupsPath returns the cgroupfs path (from the root of the hierarchy)
// for a spec's linux.cgroupsPath, converting as Kata's agent does in a
// guest without systemd: the systemd form "slice:prefix:name" becomes
// "/slice/prefix/name"; a relative path is taken from the root of the
// hierarchy (the guest agent's own cgroup); an absolute one is kept. The
// root cgroup itself and ".." components are refused.
func CgroupsPath(p string) (string, error) {
	const field = "OCI.linux.cgroupsPath"
	q := p
	if systemdCgroupsPath().MatchString(p) {
		q = strings.ReplaceAll(p, ":", "/")
	}
	if strings.ContainsRune(q, 0) {
		return "", invalid(field, "%q contains a NUL byte", p)
	}
	for _, c := range strings.Split(q, "/") {
		if c == ".." {
			return "", invalid(field, "%q must not contain \"..\"", p)
		}
	}
	out := path.Clean("/" + q)
	if out == "/" {
		return "", invalid(field, "%q names the root cgroup", p)
	}
	return out, nil
}

// convert calls specconv, turning a panic on hostile input (which the fuzz
// target guards against) into an error.
func convert(c *specs.Spec, o Options) (cfg *configs.Config, err error) {
	defer func() {
		if r := recover(); r != nil {
			cfg, err = nil, invalid("OCI", "unconvertible spec: %v", r)
		}
	}()
	cfg, err = specconv.CreateLibcontainerConfig(&specconv.CreateOpts{
		CgroupName:  o.ID,
		NoPivotRoot: o.NoPivotRoot,
		Spec:        c,
	})
	if err != nil {
		return nil, invalid("OCI", "%v", err)
	}
	return cfg, nil
}

// Resources converts an UpdateContainer request's resources into the
// cgroup resources to apply, keeping old's device rules (an update carries
// no devices, and dropping the rules would revoke every device).
func Resources(old *cgroups.Resources, r *specs.LinuxResources) (*cgroups.Resources, error) {
	if r == nil {
		return nil, invalid("resources", "must be set")
	}
	cp, err := Clone(&specs.Spec{Linux: &specs.Linux{Resources: r}})
	if err != nil {
		return nil, err
	}
	cp.Linux.CgroupsPath = "/keel-update"
	cp.Linux.Resources.Devices = nil
	cg, err := createCgroup(cp)
	if err != nil {
		return nil, err
	}
	res := cg.Resources
	if old != nil {
		res.Devices = old.Devices
		res.SkipDevices = old.SkipDevices
	}
	return res, nil
}

func createCgroup(s *specs.Spec) (cg *cgroups.Cgroup, err error) {
	defer func() {
		if r := recover(); r != nil {
			cg, err = nil, invalid("resources", "unconvertible: %v", r)
		}
	}()
	cg, err = specconv.CreateCgroupConfig(&specconv.CreateOpts{CgroupName: "update", Spec: s}, nil)
	if err != nil {
		return nil, invalid("resources", "%v", err)
	}
	return cg, nil
}
