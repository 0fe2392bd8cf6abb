// Package hotplug hot-adds devices to a running test VM through QMP, the
// way Kata's runtime does: each PCI device into its own empty
// pcie-root-port (qemu.Config.PCIeRootPorts), reported with the Kata PCI
// path the runtime would send the agent ("02/00": the root port's slot on
// the root bus, then slot 0 behind it).
//
// The VM needs room for what is added: PCIeRootPorts for PCI devices,
// MaxMemMiB/HotplugSlots for pmem and DIMMs, CPUs below maxcpus
// (-smp N,maxcpus=M in ExtraArgs) for vCPUs.
package hotplug

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/keelvm/keel/tests/vmm/qemu"
	"github.com/keelvm/keel/tests/vmm/qmp"
)

// Plugger adds devices to one VM. Safe for concurrent use.
type Plugger struct {
	qmp *qmp.Client

	mu    sync.Mutex
	ports []bool // in use, by root port index
	n     int    // ids handed out
}

// New returns a Plugger for the VM behind c, which was started with
// rootPorts qemu.PCIeRootPortID ports.
func New(c *qmp.Client, rootPorts int) *Plugger {
	return &Plugger{qmp: c, ports: make([]bool, rootPorts)}
}

// Added is a device that was hot-added.
type Added struct {
	ID       string // qdev id (for Remove / device_del)
	PCIPath  string // Kata PCI path, "" for non-PCI devices (CPU, DIMM, SCSI disk)
	port     int    // root port index, -1 if none
	nodes    []string
	objects  []string
	chardevs []string
}

// ErrNoPort is returned when every root port holds a device.
var ErrNoPort = errors.New("no free pcie-root-port")

func (p *Plugger) take() (int, string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	for i, used := range p.ports {
		if !used {
			p.ports[i] = true
			return i, fmt.Sprintf("hp%d", p.n), nil
		}
	}
	return -1, "", ErrNoPort
}

func (p *Plugger) id(prefix string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	return fmt.Sprintf("%s%d", prefix, p.n)
}

func (p *Plugger) release(port int) {
	if port < 0 {
		return
	}
	p.mu.Lock()
	p.ports[port] = false
	p.mu.Unlock()
}

// addPCI device_adds driver into a free root port and returns its path.
func (p *Plugger) addPCI(ctx context.Context, driver string, props map[string]any, a *Added) error {
	port, id, err := p.take()
	if err != nil {
		return err
	}
	a.ID, a.port = id, port
	pr := map[string]any{"bus": qemu.PCIeRootPortID(port)}
	for k, v := range props {
		pr[k] = v
	}
	if err := p.qmp.DeviceAdd(ctx, driver, id, pr); err != nil {
		p.release(port)
		return fmt.Errorf("device_add %s: %w", driver, err)
	}
	path, err := p.pciPath(ctx, port)
	if err != nil {
		// Unplug it again, so the caller's cleanup (blockdev-del, ...)
		// finds its backend free and the port is reusable.
		if derr := p.qmp.DeviceDel(ctx, id); derr == nil {
			p.release(port)
		}
		a.ID, a.port = "", -1
		return err
	}
	a.PCIPath = path
	return nil
}

// pciPath asks QEMU for the slot of root port i.
func (p *Plugger) pciPath(ctx context.Context, i int) (string, error) {
	buses, err := p.qmp.QueryPCI(ctx)
	if err != nil {
		return "", err
	}
	rp, ok := qmp.FindPCIDevice(buses, qemu.PCIeRootPortID(i))
	if !ok || rp.Bus != 0 {
		return "", fmt.Errorf("root port %s not found on the root bus", qemu.PCIeRootPortID(i))
	}
	return fmt.Sprintf("%02x/00", rp.Slot), nil
}

// AddPCI hot-adds any PCI device (driver and its properties, e.g. a
// virtio-rng-pci to pass through with VFIO, or a virtio-blk-pci on a block
// node added by the caller) into a free root port.
func (p *Plugger) AddPCI(ctx context.Context, driver string, props map[string]any) (Added, error) {
	a := Added{port: -1}
	if err := p.addPCI(ctx, driver, props, &a); err != nil {
		return Added{}, err
	}
	return a, nil
}

// AddBlock hot-adds file (raw) as a virtio-blk-pci disk.
func (p *Plugger) AddBlock(ctx context.Context, file string, readOnly bool) (Added, error) {
	a := Added{port: -1}
	node := p.id("blknode")
	if err := p.qmp.Execute(ctx, "blockdev-add", map[string]any{
		"node-name": node, "driver": "raw", "read-only": readOnly,
		"file": map[string]any{"driver": "file", "filename": file, "read-only": readOnly},
	}, nil); err != nil {
		return a, fmt.Errorf("blockdev-add %s: %w", file, err)
	}
	a.nodes = append(a.nodes, node)
	if err := p.addPCI(ctx, "virtio-blk-pci", map[string]any{"drive": node}, &a); err != nil {
		p.cleanup(ctx, a)
		return Added{}, err
	}
	return a, nil
}

// AddPmem hot-adds file (size a multiple of 2 MiB) as virtio-pmem-pci.
func (p *Plugger) AddPmem(ctx context.Context, file string, size int64) (Added, error) {
	a := Added{port: -1}
	obj := p.id("pmemobj")
	if err := p.qmp.Execute(ctx, "object-add", map[string]any{
		"qom-type": "memory-backend-file", "id": obj, "mem-path": file, "size": size, "share": true,
	}, nil); err != nil {
		return a, fmt.Errorf("object-add %s: %w", file, err)
	}
	a.objects = append(a.objects, obj)
	if err := p.addPCI(ctx, "virtio-pmem-pci", map[string]any{"memdev": obj}, &a); err != nil {
		p.cleanup(ctx, a)
		return Added{}, err
	}
	return a, nil
}

// AddVirtioFS hot-adds a vhost-user-fs-pci device with tag, connected to
// the virtiofsd already listening on socket. The guest's RAM must be
// shared (qemu.Config's memfd backend): virtiofsd maps it.
func (p *Plugger) AddVirtioFS(ctx context.Context, socket, tag string) (Added, error) {
	a := Added{port: -1}
	cd := p.id("vfschr")
	if err := p.qmp.Execute(ctx, "chardev-add", map[string]any{
		"id": cd,
		"backend": map[string]any{"type": "socket", "data": map[string]any{
			"addr":   map[string]any{"type": "unix", "data": map[string]any{"path": socket}},
			"server": false,
		}},
	}, nil); err != nil {
		return a, fmt.Errorf("chardev-add %s: %w", socket, err)
	}
	a.chardevs = append(a.chardevs, cd)
	if err := p.addPCI(ctx, "vhost-user-fs-pci", map[string]any{"chardev": cd, "tag": tag}, &a); err != nil {
		p.cleanup(ctx, a)
		return Added{}, err
	}
	return a, nil
}

// AddNet hot-adds a virtio-net-pci NIC on an existing netdev (netdev_add
// it first, e.g. a tap) with mac.
func (p *Plugger) AddNet(ctx context.Context, netdev, mac string) (Added, error) {
	a := Added{port: -1}
	if err := p.addPCI(ctx, "virtio-net-pci", map[string]any{"netdev": netdev, "mac": mac}, &a); err != nil {
		return Added{}, err
	}
	return a, nil
}

// AddSCSIController hot-adds a virtio-scsi-pci controller; disks go on it
// with AddSCSIDisk.
func (p *Plugger) AddSCSIController(ctx context.Context) (Added, error) {
	a := Added{port: -1}
	if err := p.addPCI(ctx, "virtio-scsi-pci", nil, &a); err != nil {
		return Added{}, err
	}
	return a, nil
}

// AddSCSIDisk hot-adds file (raw) as a scsi-hd at scsi-id:lun on
// controller; Kata's Storage.source for it is "<scsiID>:<lun>".
func (p *Plugger) AddSCSIDisk(ctx context.Context, controller Added, file string, scsiID, lun int) (Added, error) {
	a := Added{port: -1}
	node := p.id("scsinode")
	if err := p.qmp.Execute(ctx, "blockdev-add", map[string]any{
		"node-name": node, "driver": "raw",
		"file": map[string]any{"driver": "file", "filename": file},
	}, nil); err != nil {
		return a, fmt.Errorf("blockdev-add %s: %w", file, err)
	}
	a.nodes = append(a.nodes, node)
	a.ID = p.id("scsihd")
	if err := p.qmp.DeviceAdd(ctx, "scsi-hd", a.ID, map[string]any{
		"bus": controller.ID + ".0", "drive": node, "channel": 0, "scsi-id": scsiID, "lun": lun,
	}); err != nil {
		p.cleanup(ctx, a)
		return Added{}, fmt.Errorf("device_add scsi-hd: %w", err)
	}
	return a, nil
}

// AddCPU hot-adds the first vCPU slot QEMU reports as free.
func (p *Plugger) AddCPU(ctx context.Context) (Added, error) {
	var cpus []struct {
		Type     string         `json:"type"`
		Props    map[string]any `json:"props"`
		QOMPath  string         `json:"qom-path"`
		VCPUsCnt int            `json:"vcpus-count"`
	}
	if err := p.qmp.Execute(ctx, "query-hotpluggable-cpus", nil, &cpus); err != nil {
		return Added{}, err
	}
	for _, c := range cpus {
		if c.QOMPath != "" {
			continue
		}
		a := Added{ID: p.id("cpu"), port: -1}
		if err := p.qmp.DeviceAdd(ctx, c.Type, a.ID, c.Props); err != nil {
			return Added{}, fmt.Errorf("device_add %s: %w", c.Type, err)
		}
		return a, nil
	}
	return Added{}, errors.New("no free vCPU slot (start QEMU with -smp N,maxcpus=M)")
}

// AddDIMM hot-adds sizeMiB of RAM as a pc-dimm on a shared memfd (so
// vhost-user backends can map it).
func (p *Plugger) AddDIMM(ctx context.Context, sizeMiB int) (Added, error) {
	a := Added{port: -1}
	obj := p.id("dimmobj")
	if err := p.qmp.Execute(ctx, "object-add", map[string]any{
		"qom-type": "memory-backend-memfd", "id": obj, "size": int64(sizeMiB) << 20, "share": true,
	}, nil); err != nil {
		return a, fmt.Errorf("object-add: %w", err)
	}
	a.objects = append(a.objects, obj)
	a.ID = p.id("dimm")
	if err := p.qmp.DeviceAdd(ctx, "pc-dimm", a.ID, map[string]any{"memdev": obj}); err != nil {
		p.cleanup(ctx, a)
		return Added{}, fmt.Errorf("device_add pc-dimm: %w", err)
	}
	return a, nil
}

// MemoryDevice is a memory device as QEMU reports it (query-memory-devices).
type MemoryDevice struct {
	ID   string
	Addr uint64 // guest physical address
	Size uint64 // bytes
}

// DIMM returns where QEMU placed the pc-dimm with qdev id: what Kata's
// runtime reads before asking the agent to probe the memory
// (MemHotplugByProbe) in guests that get no ACPI memory notification.
func (p *Plugger) DIMM(ctx context.Context, id string) (MemoryDevice, error) {
	var devs []struct {
		Type string `json:"type"`
		Data struct {
			ID   string `json:"id"`
			Addr uint64 `json:"addr"`
			Size uint64 `json:"size"`
		} `json:"data"`
	}
	if err := p.qmp.Execute(ctx, "query-memory-devices", nil, &devs); err != nil {
		return MemoryDevice{}, err
	}
	for _, d := range devs {
		if d.Type == "dimm" && d.Data.ID == id {
			return MemoryDevice{ID: id, Addr: d.Data.Addr, Size: d.Data.Size}, nil
		}
	}
	return MemoryDevice{}, fmt.Errorf("no pc-dimm %q in query-memory-devices", id)
}

// Remove unplugs a device (the guest must cooperate; ctx should carry a
// deadline) and frees its backends and root port.
func (p *Plugger) Remove(ctx context.Context, a Added) error {
	if err := p.qmp.DeviceDel(ctx, a.ID); err != nil {
		return err
	}
	p.release(a.port)
	return p.cleanup(ctx, a)
}

func (p *Plugger) cleanup(ctx context.Context, a Added) error {
	var errs []error
	for _, n := range a.nodes {
		if err := p.qmp.Execute(ctx, "blockdev-del", map[string]any{"node-name": n}, nil); err != nil {
			errs = append(errs, err)
		}
	}
	for _, c := range a.chardevs {
		if err := p.qmp.Execute(ctx, "chardev-remove", map[string]any{"id": c}, nil); err != nil {
			errs = append(errs, err)
		}
	}
	for _, o := range a.objects {
		if err := p.qmp.Execute(ctx, "object-del", map[string]any{"id": o}, nil); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
