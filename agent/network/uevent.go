package network

import (
	"context"
	"fmt"

	"github.com/keelvm/keel/agent/pcipath"
	"github.com/keelvm/keel/agent/uevent"
)

// UeventDevices waits for NICs through the guest's uevent registry: a
// devicePath is a Kata PCI path ("02/01"), resolved through bridges by
// agent/pcipath, and the NIC is there when the kernel announced (or sysfs
// shows) a network interface below that PCI device.
type UeventDevices struct {
	Registry *uevent.Registry
}

var _ DeviceWaiter = UeventDevices{}

// WaitNetDevice implements DeviceWaiter; it returns the interface name the
// kernel gave the NIC (a hint: the link is still looked for by MAC first).
func (u UeventDevices) WaitNetDevice(ctx context.Context, devicePath string) (string, error) {
	p, err := pcipath.Parse(devicePath)
	if err != nil {
		return "", fmt.Errorf("devicePath %q: %v: %w", devicePath, err, ErrInvalid)
	}
	ev, err := u.Registry.Wait(ctx, p.Net(), 0)
	if err != nil {
		return "", err
	}
	return ev.Interface, nil
}
