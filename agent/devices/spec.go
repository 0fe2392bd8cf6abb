package devices

import (
	"fmt"
	"regexp"
	"strings"
	"sync"

	"github.com/opencontainers/runtime-spec/specs-go"
)

// devKey names a device by type and numbers.
type devKey struct {
	typ          string
	major, minor int64
}

// rewrite returns a copy of spec whose linux.devices entries and device
// cgroup rules use the guest devices found; spec itself is not modified.
func rewrite(spec *specs.Spec, found []guestDevice) (*specs.Spec, error) {
	out := *spec
	linux := *spec.Linux
	out.Linux = &linux
	linux.Devices = append([]specs.LinuxDevice(nil), spec.Linux.Devices...)
	res := specs.LinuxResources{}
	if spec.Linux.Resources != nil {
		res = *spec.Linux.Resources
	}
	res.Devices = append([]specs.LinuxDeviceCgroup(nil), res.Devices...)
	linux.Resources = &res

	hostToGuest := map[devKey]devKey{}
	for _, g := range found {
		j := -1
		for k := range linux.Devices {
			if linux.Devices[k].Path == g.containerPath {
				j = k
				break
			}
		}
		if j < 0 {
			return nil, fmt.Errorf("devices[%d].container_path %q: no such entry in the OCI spec's linux.devices: %w", g.index, g.containerPath, ErrInvalid)
		}
		d := &linux.Devices[j]
		if d.Type != g.typ && !(d.Type == "u" && g.typ == "c") {
			return nil, fmt.Errorf("devices[%d]: linux.devices %q has type %q but the guest device is type %q: %w", g.index, d.Path, d.Type, g.typ, ErrInvalid)
		}
		host := devKey{d.Type, d.Major, d.Minor}
		guest := devKey{g.typ, g.major, g.minor}
		if prev, dup := hostToGuest[host]; dup && prev != guest {
			return nil, fmt.Errorf("devices[%d]: host device %s %d:%d maps to two guest devices: %w", g.index, host.typ, host.major, host.minor, ErrInvalid)
		}
		hostToGuest[host] = guest
		d.Major, d.Minor = g.major, g.minor
		if g.newPath != "" {
			d.Path = g.newPath
		}
	}
	// One pass over the original rules, so that a host number which is
	// also another device's guest number is not rewritten twice.
	for k := range res.Devices {
		r := &res.Devices[k]
		if r.Major == nil || r.Minor == nil {
			continue
		}
		if guest, ok := hostToGuest[devKey{r.Type, *r.Major, *r.Minor}]; ok {
			maj, min := guest.major, guest.minor
			r.Major, r.Minor = &maj, &min
		}
	}
	for _, g := range found {
		maj, min := g.major, g.minor
		res.Devices = append(res.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: g.typ, Major: &maj, Minor: &min, Access: "rwm"})
	}
	return &out, nil
}

// pciAddr is a full PCI address, domain included ("0000:00:1f.7").
// Compiled on first use, not at package init (every container init, a
// re-exec of this binary, would pay for it).
var pciAddr = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-1][0-9a-fA-F]\.[0-7]$`)
})

// translatePCIEnv rewrites the SR-IOV device plugin's variables for the
// guest, as Kata does: PCIDEVICE_<resource>=<host BDF>[,<host BDF>...]
// gets the guest addresses, and PCIDEVICE_<resource>_INFO has the same
// addresses replaced in its JSON. A variable with an address not in m is
// left alone, with its _INFO.
func translatePCIEnv(env []string, m map[string]string) []string {
	out := append([]string(nil), env...)
	infos := map[string]map[string]string{}
	for i, kv := range out {
		name, val, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, "PCIDEVICE_") || strings.HasSuffix(name, "_INFO") {
			continue
		}
		addrs := strings.Split(val, ",")
		repl := map[string]string{}
		for j, a := range addrs {
			g, ok := m[strings.ToLower(a)]
			if !ok {
				repl = nil
				break
			}
			repl[a] = g
			addrs[j] = g
		}
		if repl == nil {
			continue
		}
		out[i] = name + "=" + strings.Join(addrs, ",")
		infos[name+"_INFO"] = repl
	}
	for i, kv := range out {
		name, val, ok := strings.Cut(kv, "=")
		if repl := infos[name]; ok && repl != nil {
			for h, g := range repl {
				val = strings.ReplaceAll(val, h, g)
			}
			out[i] = name + "=" + val
		}
	}
	return out
}
