package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// Status is the reply of query-status.
type Status struct {
	Status     string `json:"status"` // "running", "paused", "shutdown", "prelaunch", ...
	Running    bool   `json:"running"`
	Singlestep bool   `json:"singlestep"`
}

// QueryStatus returns the VM run state.
func (c *Client) QueryStatus(ctx context.Context) (Status, error) {
	var s Status
	err := c.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// Quit asks QEMU to exit. QEMU may close the socket before its reply
// arrives; that counts as success.
func (c *Client) Quit(ctx context.Context) error {
	err := c.Execute(ctx, "quit", nil, nil)
	if errors.Is(err, ErrClosed) {
		return nil
	}
	return err
}

// DeviceAdd hot-plugs a device: driver and id plus driver properties, as
// in `-device driver,id=id,key=value`.
func (c *Client) DeviceAdd(ctx context.Context, driver, id string, props map[string]any) error {
	if driver == "" || id == "" {
		return errors.New("qmp device_add: driver and id are required")
	}
	args := map[string]any{}
	for k, v := range props {
		args[k] = v
	}
	args["driver"] = driver
	args["id"] = id
	return c.Execute(ctx, "device_add", args, nil)
}

// DeviceDel requests removal of device id and waits for QEMU's
// DEVICE_DELETED event for it. Removal needs the guest's cooperation (PCI
// hot-unplug), so ctx should carry a deadline.
func (c *Client) DeviceDel(ctx context.Context, id string) error {
	events, unsubscribe := c.Subscribe()
	defer unsubscribe()
	if err := c.Execute(ctx, "device_del", map[string]any{"id": id}, nil); err != nil {
		return err
	}
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return fmt.Errorf("qmp device_del %s: %w", id, errOrClosed(c.Err()))
			}
			if ev.Name != "DEVICE_DELETED" {
				continue
			}
			var d struct {
				Device string `json:"device"`
			}
			if json.Unmarshal(ev.Data, &d) == nil && d.Device == id {
				return nil
			}
		case <-ctx.Done():
			return fmt.Errorf("qmp device_del %s: waiting for DEVICE_DELETED: %w", id, ctx.Err())
		}
	}
}

// PCIBus is one bus of query-pci.
type PCIBus struct {
	Bus     int         `json:"bus"`
	Devices []PCIDevice `json:"devices"`
}

// PCIDevice is one function on a PCI bus (subset of QEMU's PciDeviceInfo).
type PCIDevice struct {
	Bus       int    `json:"bus"`
	Slot      int    `json:"slot"`
	Function  int    `json:"function"`
	QdevID    string `json:"qdev_id"`
	ClassInfo struct {
		Class int    `json:"class"`
		Desc  string `json:"desc"`
	} `json:"class_info"`
	ID struct {
		Vendor int `json:"vendor"`
		Device int `json:"device"`
	} `json:"id"`
	PCIBridge *struct {
		Bus     json.RawMessage `json:"bus"`
		Devices []PCIDevice     `json:"devices"`
	} `json:"pci_bridge"`
}

// QueryPCI returns the PCI topology.
func (c *Client) QueryPCI(ctx context.Context) ([]PCIBus, error) {
	var buses []PCIBus
	err := c.Execute(ctx, "query-pci", nil, &buses)
	return buses, err
}

// FindPCIDevice walks buses (and bridges) for the device with qdev id.
func FindPCIDevice(buses []PCIBus, qdevID string) (PCIDevice, bool) {
	var walk func([]PCIDevice) (PCIDevice, bool)
	walk = func(ds []PCIDevice) (PCIDevice, bool) {
		for _, d := range ds {
			if d.QdevID == qdevID {
				return d, true
			}
			if d.PCIBridge != nil {
				if f, ok := walk(d.PCIBridge.Devices); ok {
					return f, true
				}
			}
		}
		return PCIDevice{}, false
	}
	for _, b := range buses {
		if d, ok := walk(b.Devices); ok {
			return d, true
		}
	}
	return PCIDevice{}, false
}
