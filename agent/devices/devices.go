// Package devices hands the devices a runtime passes in CreateContainer
// (Kata's Device message) to the container: it finds each device in the
// guest, where it usually arrived by PCI hotplug, and rewrites the
// container's OCI spec so the device node and the device cgroup rules use
// the guest's major:minor instead of the host's.
//
// Device types, with Kata's names and fields:
//
//	blk          virtio-blk on PCI: id is the PCI path ("02/00"); without an
//	             id, vm_path names the node (/dev/vdb)
//	mmioblk      virtio-blk on MMIO: vm_path (/dev/vdb)
//	scsi         virtio-scsi disk: id is "target:lun" (the hosts are rescanned)
//	nvdimm       vm_path (/dev/pmem1)
//	vfio-pci     options "HOSTBDF=pcipath": each function is bound to
//	             vfio-pci and the container gets /dev/vfio/<guest group>
//	vfio-pci-gk  the same functions, left to their guest kernel driver
//
// VFIO's no-IOMMU mode (guest booted with vfio.enable_unsafe_noiommu_mode=1
// and no vIOMMU) is accepted: binding a function without an IOMMU group to
// vfio-pci makes the kernel create a "vfio-noiommu" group, and the
// container gets /dev/vfio/noiommu-<N> (Kata's agent waits for
// /dev/vfio/<N> and times out there). Such a group gives no DMA isolation,
// which is why the kernel lets only CAP_SYS_RAWIO open it: the agent adds
// no capability, the container's spec decides. Turning the mode on is the
// guest configuration's choice (its kernel command line), not a request's.
//
// Every lookup waits for the device up to the agent's hotplug timeout
// (Locator); nothing is created before every device was found, so a
// failure leaves the spec and the guest as they were, except for a PCI
// function already rebound to vfio-pci.
package devices

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/keelvm/keel/agent/errdefs"
	"github.com/keelvm/keel/agent/scsi"
)

// Device types (Device.Type).
const (
	TypeBlk       = "blk"
	TypeMmioBlk   = "mmioblk"
	TypeSCSI      = "scsi"
	TypeNvdimm    = "nvdimm"
	TypeVFIOPCI   = "vfio-pci"
	TypeVFIOPCIGK = "vfio-pci-gk"
)

// Types lists the device types Apply handles (GetGuestDetails'
// device_handlers).
var Types = []string{TypeBlk, TypeMmioBlk, TypeSCSI, TypeNvdimm, TypeVFIOPCI, TypeVFIOPCIGK}

// kataOnly are Kata device types this agent knows but does not serve on
// this architecture or hypervisor.
var kataOnly = map[string]string{
	"ccw-blk":      "virtio-blk on CCW exists only on s390x",
	"vfio-ap":      "VFIO-AP crypto adapters exist only on s390x",
	"vfio-ap-cold": "VFIO-AP crypto adapters exist only on s390x",
}

// Error classes.
var (
	ErrInvalid     = errdefs.New(errdefs.ErrInvalidArgument, "invalid argument")
	ErrNotFound    = errdefs.New(errdefs.ErrNotFound, "not found")
	ErrUnsupported = errdefs.New(errdefs.ErrUnimplemented, "unsupported")
)

// MaxDevices bounds the devices of one container.
const MaxDevices = 256

// Device is one device for a container (Kata's grpc.Device).
type Device struct {
	ID            string
	Type          string
	VMPath        string
	ContainerPath string
	Options       []string
}

// Locator finds devices in the guest, each call waiting for the device to
// appear until ctx ends or the agent's hotplug timeout passes
// (context.DeadlineExceeded).
type Locator interface {
	// PCIBlock returns the /dev node of the disk of the virtio-blk PCI
	// function at pciPath (Kata's "bb/dd[/dd...]" form).
	PCIBlock(ctx context.Context, pciPath string) (string, error)
	// PCIDevice returns the guest address ("0000:01:00.0") of the PCI
	// function at pciPath.
	PCIDevice(ctx context.Context, pciPath string) (string, error)
	// Block returns /dev/<name> once block device name exists.
	Block(ctx context.Context, name string) (string, error)
	// SCSIBlock returns the /dev node of the SCSI disk at "target:lun".
	SCSIBlock(ctx context.Context, addr string) (string, error)
	// VFIOGroup returns the /dev node of VFIO group group
	// (/dev/vfio/<group>, or /dev/vfio/noiommu-<group>).
	VFIOGroup(ctx context.Context, group string) (string, error)
}

// Manager applies devices to container specs.
type Manager struct {
	// Locator finds devices; nil finds only devices already present
	// (by /dev path) and refuses PCI and SCSI devices.
	Locator Locator
	// SysfsRoot is where sysfs is mounted ("/sys" when empty), for VFIO
	// driver binding and IOMMU groups.
	SysfsRoot string
}

func (m *Manager) sysfs(p ...string) string {
	root := m.SysfsRoot
	if root == "" {
		root = "/sys"
	}
	return filepath.Join(append([]string{root}, p...)...)
}

func (m *Manager) locator() Locator {
	if m.Locator != nil {
		return m.Locator
	}
	return presentOnly{}
}

// guestDevice is what a device resolved to in the guest.
type guestDevice struct {
	index         int
	containerPath string
	typ           string // "b" or "c"
	major, minor  int64
	// newPath replaces the spec entry's path (VFIO: the guest's group).
	newPath string
}

// Apply resolves devs in the guest and rewrites spec: each device's
// linux.devices entry (found by container_path) gets the guest's
// major:minor (and, for VFIO, the guest group's path), the
// linux.resources.devices rules naming the host's numbers are rewritten,
// and an rwm allow rule is added for each guest device. PCIDEVICE_*
// environment variables naming host PCI addresses of VFIO functions are
// translated to the guest's addresses. On error spec is unchanged.
func (m *Manager) Apply(ctx context.Context, devs []Device, spec *specs.Spec) error {
	if len(devs) == 0 {
		return nil
	}
	if len(devs) > MaxDevices {
		return fmt.Errorf("devices: %d devices exceed %d: %w", len(devs), MaxDevices, ErrInvalid)
	}
	if spec == nil || spec.Linux == nil {
		return fmt.Errorf("devices: the OCI spec has no linux section: %w", ErrInvalid)
	}
	seen := map[string]int{}
	for i, d := range devs {
		if err := validate(i, d); err != nil {
			return err
		}
		if j, dup := seen[d.ContainerPath]; dup {
			return fmt.Errorf("devices[%d].container_path %q: also used by devices[%d]: %w", i, d.ContainerPath, j, ErrInvalid)
		}
		seen[d.ContainerPath] = i
	}
	var found []guestDevice
	pciMap := map[string]string{} // host BDF -> guest BDF
	for i, d := range devs {
		g, err := m.resolve(ctx, i, d, pciMap)
		if err != nil {
			return err
		}
		if g != nil {
			found = append(found, *g)
		}
	}
	out, err := rewrite(spec, found)
	if err != nil {
		return err
	}
	if out.Process != nil && len(pciMap) > 0 {
		out.Process.Env = translatePCIEnv(out.Process.Env, pciMap)
	}
	*spec = *out
	return nil
}

func validate(i int, d Device) error {
	f := func(field, format string, a ...any) error {
		return fmt.Errorf("devices[%d].%s: %s: %w", i, field, fmt.Sprintf(format, a...), ErrInvalid)
	}
	switch {
	case d.Type == "":
		return f("type", "must be set (one of %s)", strings.Join(Types, ", "))
	case d.ContainerPath == "":
		return f("container_path", "must be set")
	case !path.IsAbs(d.ContainerPath) || path.Clean(d.ContainerPath) != d.ContainerPath || strings.ContainsRune(d.ContainerPath, 0):
		return f("container_path", "%q must be a clean absolute path", d.ContainerPath)
	case d.ID == "" && d.VMPath == "":
		return f("id", "id or vm_path must be set")
	case d.VMPath != "" && !validDevPath(d.VMPath):
		return f("vm_path", "%q must be a node directly under /dev", d.VMPath)
	}
	return nil
}

// validDevPath accepts /dev/NAME: block devices the guest kernel names.
func validDevPath(p string) bool {
	name, ok := strings.CutPrefix(p, "/dev/")
	return ok && name != "" && !strings.ContainsAny(name, "/\x00") && name != "." && name != ".."
}

func (m *Manager) resolve(ctx context.Context, i int, d Device, pciMap map[string]string) (*guestDevice, error) {
	loc := m.locator()
	var node string
	var err error
	switch d.Type {
	case TypeBlk:
		if d.ID != "" {
			if _, err := parsePCIPath(d.ID); err != nil {
				return nil, fmt.Errorf("devices[%d].id %q: %w", i, d.ID, err)
			}
			node, err = loc.PCIBlock(ctx, d.ID)
			err = wrapField(err, i, "id", d.ID)
		} else {
			node, err = loc.Block(ctx, strings.TrimPrefix(d.VMPath, "/dev/"))
			err = wrapField(err, i, "vm_path", d.VMPath)
		}
	case TypeMmioBlk, TypeNvdimm:
		if d.VMPath == "" {
			return nil, fmt.Errorf("devices[%d].vm_path: must be set for %s: %w", i, d.Type, ErrInvalid)
		}
		node, err = loc.Block(ctx, strings.TrimPrefix(d.VMPath, "/dev/"))
		err = wrapField(err, i, "vm_path", d.VMPath)
	case TypeSCSI:
		if _, err := scsi.ParseAddr(d.ID); err != nil {
			return nil, fmt.Errorf("devices[%d].id: %v: %w", i, err, ErrInvalid)
		}
		node, err = loc.SCSIBlock(ctx, d.ID)
		err = wrapField(err, i, "id", d.ID)
	case TypeVFIOPCI, TypeVFIOPCIGK:
		return m.vfio(ctx, i, d, pciMap)
	default:
		if why, ok := kataOnly[d.Type]; ok {
			return nil, fmt.Errorf("devices[%d].type %q: %s: %w", i, d.Type, why, ErrUnsupported)
		}
		return nil, fmt.Errorf("devices[%d].type %q: unknown (known: %s): %w", i, d.Type, strings.Join(Types, ", "), ErrInvalid)
	}
	if err != nil {
		return nil, err
	}
	g, err := nodeInfo(node)
	if err != nil {
		return nil, fmt.Errorf("devices[%d]: %w", i, err)
	}
	g.index, g.containerPath = i, d.ContainerPath
	return g, nil
}

func wrapField(err error, i int, field, value string) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("devices[%d].%s %q: %w", i, field, value, err)
}

// nodeInfo stats a device node in the guest.
func nodeInfo(node string) (*guestDevice, error) {
	var st unix.Stat_t
	if err := unix.Stat(node, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("%s: %w", node, ErrNotFound)
		}
		return nil, fmt.Errorf("unable to stat %s: %w", node, err)
	}
	g := &guestDevice{major: int64(unix.Major(st.Rdev)), minor: int64(unix.Minor(st.Rdev))}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFBLK:
		g.typ = "b"
	case unix.S_IFCHR:
		g.typ = "c"
	default:
		return nil, fmt.Errorf("%s is not a device node: %w", node, ErrInvalid)
	}
	return g, nil
}

// presentOnly is the Locator without hotplug support: block devices must
// already exist.
type presentOnly struct{}

func (presentOnly) Block(_ context.Context, name string) (string, error) {
	p := "/dev/" + name
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s does not exist (no hotplug support configured): %w", p, ErrNotFound)
	}
	return p, nil
}

func (presentOnly) PCIBlock(context.Context, string) (string, error) {
	return "", fmt.Errorf("PCI devices: no hotplug support configured: %w", ErrUnsupported)
}

func (presentOnly) PCIDevice(context.Context, string) (string, error) {
	return "", fmt.Errorf("PCI devices: no hotplug support configured: %w", ErrUnsupported)
}

func (presentOnly) SCSIBlock(context.Context, string) (string, error) {
	return "", fmt.Errorf("SCSI devices: no hotplug support configured: %w", ErrUnsupported)
}

func (presentOnly) VFIOGroup(_ context.Context, group string) (string, error) {
	for _, p := range []string{"/dev/vfio/" + group, "/dev/vfio/noiommu-" + group} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("/dev/vfio/%s does not exist: %w", group, ErrNotFound)
}
