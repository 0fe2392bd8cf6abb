package devices

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/uevent"
)

// TestUeventsWaitsForEvents: each lookup returns the node its uevent
// names once it arrives, and gives up with DeadlineExceeded.
func TestUeventsWaitsForEvents(t *testing.T) {
	reg := uevent.NewRegistry(t.TempDir(), 2*time.Second)
	u := Uevents{Reg: reg}
	ctx := context.Background()
	deliver := func(ev uevent.Event) {
		go func() {
			for reg.Waiting() == 0 {
				time.Sleep(5 * time.Millisecond)
			}
			reg.Deliver(ev)
		}()
	}
	deliver(uevent.Event{Action: "add", Subsystem: "vfio", DevPath: "/devices/virtual/vfio/noiommu-3", DevName: "vfio/noiommu-3"})
	if n, err := u.VFIOGroup(ctx, "3"); err != nil || n != "/dev/vfio/noiommu-3" {
		t.Errorf("VFIOGroup = %q, %v", n, err)
	}
	deliver(uevent.Event{Action: "add", Subsystem: "block", DevType: "disk", DevPath: "/devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio3/block/vdc", DevName: "vdc"})
	if n, err := u.PCIBlock(ctx, "02/00"); err != nil || n != "/dev/vdc" {
		t.Errorf("PCIBlock = %q, %v", n, err)
	}
	deliver(uevent.Event{Action: "add", Subsystem: "pci", DevPath: "/devices/pci0000:00/0000:00:04.0/0000:03:00.0"})
	if n, err := u.PCIDevice(ctx, "04/00"); err != nil || n != "0000:03:00.0" {
		t.Errorf("PCIDevice = %q, %v", n, err)
	}
	if _, err := u.PCIBlock(ctx, "zz"); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad path: %v", err)
	}
	short := Uevents{Reg: uevent.NewRegistry(t.TempDir(), 100*time.Millisecond)}
	if _, err := short.Block(ctx, "vdq"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("missing disk: %v", err)
	}
}
