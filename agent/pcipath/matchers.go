package pcipath

import (
	"strings"

	"github.com/keelvm/keel/agent/uevent"
)

// Device matches the PCI device at p itself (subsystem pci), e.g. to bind
// it to vfio-pci.
func (p Path) Device() uevent.Matcher {
	return uevent.Matcher{
		What: "PCI device at PCI path " + p.String(),
		Match: func(ev *uevent.Event) bool {
			r, ok := p.rest(ev.DevPath)
			return ok && r == "" && ev.Subsystem == "pci" && isAdd(ev)
		},
		Present: func(sysfs string) []string {
			dev, err := p.Resolve(sysfs)
			if err != nil {
				return nil
			}
			return []string{dev}
		},
	}
}

// Block matches the whole disk (not a partition) of the block device at
// p: a virtio-blk disk ("/virtio3/block/vda"), an NVMe namespace, ...
// Event.DevName is its name under /dev.
func (p Path) Block() uevent.Matcher {
	return p.child("block device", "block", func(ev *uevent.Event) bool {
		return ev.DevType == "disk" && ev.DevName != "" && !strings.HasPrefix(ev.DevName, "pmem")
	}, "/virtio*/block/*", "/block/*", "/nvme/*/*")
}

// Pmem matches the pmem disk of the virtio-pmem device at p
// ("/virtio4/ndbus0/region0/namespace0.0/block/pmem0").
func (p Path) Pmem() uevent.Matcher {
	return p.child("pmem device", "block", func(ev *uevent.Event) bool {
		return ev.DevType == "disk" && strings.HasPrefix(ev.DevName, "pmem")
	}, "/virtio*/ndbus*/region*/namespace*/block/*")
}

// Net matches the network interface of the NIC at p
// ("/virtio1/net/eth1"); Event.Interface is its name.
func (p Path) Net() uevent.Matcher {
	return p.child("network interface", "net", func(ev *uevent.Event) bool {
		return ev.Interface != ""
	}, "/virtio*/net/*", "/net/*")
}

// child matches a device of subsystem below the PCI device at p; globs
// (relative to the PCI device) find it in sysfs.
func (p Path) child(kind, subsystem string, ok func(*uevent.Event) bool, globs ...string) uevent.Matcher {
	return uevent.Matcher{
		What: kind + " at PCI path " + p.String(),
		Match: func(ev *uevent.Event) bool {
			r, under := p.rest(ev.DevPath)
			return under && r != "" && ev.Subsystem == subsystem && isAdd(ev) && ok(ev)
		},
		Present: func(sysfs string) []string {
			dev, err := p.Resolve(sysfs)
			if err != nil {
				return nil
			}
			var out []string
			for _, g := range globs {
				out = append(out, uevent.Glob(sysfs, dev+g)...)
			}
			return out
		},
	}
}

func isAdd(ev *uevent.Event) bool {
	return ev.Action == uevent.ActionAdd || ev.Action == uevent.ActionBind
}
