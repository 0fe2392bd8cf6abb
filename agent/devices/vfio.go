package devices

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// vfio handles vfio-pci and vfio-pci-gk: every option names a function as
// "HOSTBDF=pcipath". vfio-pci binds each guest function to vfio-pci
// (driver_override, unbind, drivers_probe), checks that they share one
// IOMMU group and points the spec entry at that group's node;
// vfio-pci-gk only waits for the functions, leaving their guest drivers.
func (m *Manager) vfio(ctx context.Context, i int, d Device, pciMap map[string]string) (*guestDevice, error) {
	bind := d.Type == TypeVFIOPCI
	if len(d.Options) == 0 {
		return nil, fmt.Errorf("devices[%d].options: %s needs HOSTBDF=pcipath options: %w", i, d.Type, ErrInvalid)
	}
	loc := m.locator()
	group := ""
	for j, opt := range d.Options {
		field := fmt.Sprintf("devices[%d].options[%d] %q", i, j, opt)
		host, pciPath, ok := strings.Cut(opt, "=")
		if !ok || strings.Contains(pciPath, "=") || !pciAddr().MatchString(host) {
			return nil, fmt.Errorf("%s: must be HOSTBDF=pcipath, like 0000:3b:00.0=02/00: %w", field, ErrInvalid)
		}
		if _, err := parsePCIPath(pciPath); err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		bdf, err := loc.PCIDevice(ctx, pciPath)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		pciMap[strings.ToLower(host)] = bdf
		if !bind {
			continue
		}
		if err := m.bindVFIO(ctx, bdf); err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		g, err := m.iommuGroup(bdf)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		if group != "" && g != group {
			return nil, fmt.Errorf("%s: guest function %s is in IOMMU group %s, the others in %s: %w", field, bdf, g, group, ErrInvalid)
		}
		group = g
	}
	if !bind {
		return nil, nil
	}
	node, err := loc.VFIOGroup(ctx, group)
	if err != nil {
		return nil, fmt.Errorf("devices[%d]: VFIO group %s: %w", i, group, err)
	}
	g, err := nodeInfo(node)
	if err != nil {
		return nil, fmt.Errorf("devices[%d]: %w", i, err)
	}
	g.index, g.containerPath, g.newPath = i, d.ContainerPath, node
	return g, nil
}

// bindWait bounds how long bindVFIO waits for a function to bind.
const bindWait = 5 * time.Second

// bindVFIO makes vfio-pci the driver of PCI function bdf, like
// `driverctl set-override BDF vfio-pci`.
//
// A hot-plugged function is announced (its add uevent, its sysfs
// directory) before the PCI core lets drivers match it
// (drivers/pci/bus.c pci_bus_add_device sets match_driver, then attaches
// a driver): a probe in that window binds nothing, and the core's own
// attach a moment later binds vfio-pci through the override. So bindVFIO
// asks for a probe and looks again until vfio-pci is bound, for at most
// bindWait within ctx.
func (m *Manager) bindVFIO(ctx context.Context, bdf string) error {
	if _, err := os.Stat(m.sysfs("bus/pci/drivers/vfio-pci")); err != nil {
		return fmt.Errorf("the vfio-pci driver is not loaded (kernel_modules: vfio-pci, or CONFIG_VFIO_PCI): %w", ErrUnsupported)
	}
	dev := m.sysfs("bus/pci/devices", bdf)
	if err := os.WriteFile(filepath.Join(dev, "driver_override"), []byte("vfio-pci"), 0); err != nil {
		return fmt.Errorf("unable to set the driver override of %s: %w", bdf, err)
	}
	giveUp := time.NewTimer(bindWait)
	defer giveUp.Stop()
	// Probe, then mostly watch the driver link: the core's own attach
	// binds through the override. A probe that fails for good (no IOMMU
	// group) logs a kernel warning each time, so probes back off.
	nextProbe, probeGap := time.Time{}, 100*time.Millisecond
	for {
		cur, err := os.Readlink(filepath.Join(dev, "driver"))
		switch {
		case err == nil && filepath.Base(cur) == "vfio-pci":
			return nil
		case err == nil:
			// Bound before the override was set: unbind, then probe.
			if err := os.WriteFile(filepath.Join(dev, "driver", "unbind"), []byte(bdf), 0); err != nil {
				return fmt.Errorf("unable to unbind %s from %s: %w", bdf, filepath.Base(cur), err)
			}
			nextProbe = time.Time{} // probe at once: nothing else will bind it
		case !errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("unable to read the driver of %s: %w", bdf, err)
		}
		if now := time.Now(); !now.Before(nextProbe) {
			if err := os.WriteFile(m.sysfs("bus/pci/drivers_probe"), []byte(bdf), 0); err != nil {
				return fmt.Errorf("unable to probe %s for vfio-pci: %w", bdf, err)
			}
			if !nextProbe.IsZero() {
				probeGap *= 2
			}
			nextProbe = now.Add(probeGap)
			if cur, err := os.Readlink(filepath.Join(dev, "driver")); err == nil && filepath.Base(cur) == "vfio-pci" {
				return nil
			}
		}
		select {
		case <-time.After(10 * time.Millisecond):
		case <-giveUp.C:
			cur, err := os.Readlink(filepath.Join(dev, "driver"))
			return fmt.Errorf("%s did not bind to vfio-pci within %s (driver %q, %v); a function without an IOMMU group needs vfio.enable_unsafe_noiommu_mode=1", bdf, bindWait, filepath.Base(cur), err)
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s to bind to vfio-pci: %w", bdf, ctx.Err())
		}
	}
}

// iommuGroup returns the IOMMU group number of PCI function bdf.
func (m *Manager) iommuGroup(bdf string) (string, error) {
	l, err := os.Readlink(m.sysfs("bus/pci/devices", bdf, "iommu_group"))
	if err != nil {
		return "", fmt.Errorf("%s has no IOMMU group (no vIOMMU, and no vfio no-IOMMU mode): %w", bdf, ErrUnsupported)
	}
	g := filepath.Base(l)
	if _, err := strconv.ParseUint(g, 10, 32); err != nil {
		return "", fmt.Errorf("unexpected IOMMU group link %q of %s", l, bdf)
	}
	return g, nil
}
