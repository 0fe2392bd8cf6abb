package devices

import (
	"context"
	"fmt"
	"path"
	"path/filepath"

	"github.com/keelvm/keel/agent/pcipath"
	"github.com/keelvm/keel/agent/scsi"
	"github.com/keelvm/keel/agent/uevent"
)

// Uevents is the Locator of the agent: devices are awaited through the
// uevent registry (which also looks in sysfs, so a device that arrived
// before the RPC is found at once), each wait bounded by the registry's
// timeout (agent.hotplug_timeout).
type Uevents struct {
	Reg *uevent.Registry
}

var _ Locator = Uevents{}

func (u Uevents) wait(ctx context.Context, m uevent.Matcher) (uevent.Event, error) {
	return u.Reg.Wait(ctx, m, 0)
}

func parsePCIPath(p string) (pcipath.Path, error) {
	pp, err := pcipath.Parse(p)
	if err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrInvalid)
	}
	return pp, nil
}

func devNode(ev uevent.Event) (string, error) {
	if ev.DevName == "" {
		return "", fmt.Errorf("%s has no device node: %w", ev.DevPath, ErrNotFound)
	}
	return "/dev/" + ev.DevName, nil
}

// PCIBlock implements Locator.
func (u Uevents) PCIBlock(ctx context.Context, p string) (string, error) {
	pp, err := parsePCIPath(p)
	if err != nil {
		return "", err
	}
	ev, err := u.wait(ctx, pp.Block())
	if err != nil {
		return "", err
	}
	return devNode(ev)
}

// PCIDevice implements Locator.
func (u Uevents) PCIDevice(ctx context.Context, p string) (string, error) {
	pp, err := parsePCIPath(p)
	if err != nil {
		return "", err
	}
	ev, err := u.wait(ctx, pp.Device())
	if err != nil {
		return "", err
	}
	bdf := path.Base(ev.DevPath)
	if !pciAddr().MatchString(bdf) {
		return "", fmt.Errorf("unexpected PCI devpath %s", ev.DevPath)
	}
	return bdf, nil
}

// Block implements Locator.
func (u Uevents) Block(ctx context.Context, name string) (string, error) {
	ev, err := u.wait(ctx, uevent.ByName("block", name))
	if err != nil {
		return "", err
	}
	return devNode(ev)
}

// SCSIBlock implements Locator.
func (u Uevents) SCSIBlock(ctx context.Context, addr string) (string, error) {
	a, err := scsi.ParseAddr(addr)
	if err != nil {
		return "", fmt.Errorf("%v: %w", err, ErrInvalid)
	}
	ev, err := u.wait(ctx, scsi.Disk(a))
	if err != nil {
		return "", err
	}
	return devNode(ev)
}

// VFIOGroup implements Locator: the group's node, /dev/vfio/<group> (or
// /dev/vfio/noiommu-<group> in vfio's no-IOMMU mode), appears once a
// function of the group is bound to vfio-pci.
func (u Uevents) VFIOGroup(ctx context.Context, group string) (string, error) {
	paths := []string{"/devices/virtual/vfio/" + group, "/devices/virtual/vfio/noiommu-" + group}
	ev, err := u.wait(ctx, uevent.Matcher{
		What: "VFIO group " + group,
		Match: func(ev *uevent.Event) bool {
			return ev.Subsystem == "vfio" && ev.Action == uevent.ActionAdd && (ev.DevPath == paths[0] || ev.DevPath == paths[1])
		},
		Present: func(sysfs string) []string {
			var out []string
			for _, p := range paths {
				if _, err := filepath.EvalSymlinks(filepath.Join(sysfs, p)); err == nil {
					out = append(out, p)
				}
			}
			return out
		},
	})
	if err != nil {
		return "", err
	}
	return devNode(ev)
}

// PCIBlock finds the disk of the virtio-blk function at a PCI path (for
// AddSwap), waiting for it like a blk device.
func (m *Manager) PCIBlock(ctx context.Context, p string) (string, error) {
	if _, err := parsePCIPath(p); err != nil {
		return "", err
	}
	return m.locator().PCIBlock(ctx, p)
}
