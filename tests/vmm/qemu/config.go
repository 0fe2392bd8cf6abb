package qemu

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Defaults for Config fields left zero.
const (
	DefaultMemoryMiB = 512
	DefaultCPUs      = 1
	DefaultCPUModel  = "max" // crc32c-intel and friends need the host-like model under TCG
	// pmemAlign is the size granularity enforced for pmem backing files:
	// Linux maps pmem in 2 MiB (PMD) units for DAX.
	pmemAlign = 2 << 20
	// hotplugHeadroomMiB is added to maxmem beyond the pmem devices so
	// memory can be hot-plugged later without relaunching.
	hotplugHeadroomMiB = 1024
)

// maxRootPorts bounds PCIeRootPorts: the q35 root bus has 32 slots, a few
// of which the machine itself uses.
const maxRootPorts = 24

// PCIeRootPortID is the qdev id of the i-th port added by PCIeRootPorts.
func PCIeRootPortID(i int) string { return fmt.Sprintf("rp%d", i) }

// PmemKind selects how a PmemDevice is presented to the guest.
type PmemKind string

const (
	// VirtioPmem is -device virtio-pmem-pci (guest: virtio_pmem -> /dev/pmemN).
	VirtioPmem PmemKind = "virtio-pmem"
	// NVDIMM is -device nvdimm with ACPI NFIT (guest: nfit, nd_pmem -> /dev/pmemN).
	NVDIMM PmemKind = "nvdimm"
)

// PmemDevice is a host file mapped into the guest as persistent memory.
type PmemDevice struct {
	// Path is the backing file; its size (a multiple of 2 MiB) is the
	// device size.
	Path string
	Kind PmemKind
	// ReadOnly maps the file read-only (nvdimm: also unarmed=on, so the
	// guest sees the region as read-only).
	ReadOnly bool
}

// Drive is a raw (or other format) image attached as virtio-blk-pci.
type Drive struct {
	Path     string
	Format   string // default "raw"
	ReadOnly bool
}

// Config describes one VM. Kernel is the only required field.
type Config struct {
	// Binary is the QEMU executable; default $KEEL_QEMU or qemu-system-x86_64.
	Binary string
	// Kernel is a bzImage or an ELF vmlinux with a PVH note; the latter
	// (guestkernel's VmlinuxPath) boots about twice as fast under TCG.
	Kernel string
	Initrd string
	Append string // kernel command line

	MemoryMiB int // default 512; always a shared memfd (vhost-user needs it)
	// MaxMemMiB and HotplugSlots reserve room for memory devices. They are
	// set automatically when Pmem is not empty; set them to plan hotplug.
	MaxMemMiB    int
	HotplugSlots int

	CPUs     int    // default 1
	CPUModel string // default "max"

	// Firmware is the -bios image; empty is QEMU's default (SeaBIOS).
	// QBoot is the minimal one that only loads the kernel: enough for a
	// -kernel boot without hotplug-heavy PCI setups.
	Firmware string

	// Machine is the machine type with its options, before the accel and
	// RAM backend Launch adds; default "q35". "microvm,pcie=on" gives a
	// guest whose disks (-device virtio-blk-device in ExtraArgs) sit on
	// virtio-mmio transports, as Firecracker's do, while the vsock device
	// stays on PCIe; Pmem, Drives and PCIeRootPorts need q35.
	Machine string

	// VhostUserVsockSocket, if set, is the unix socket of a running
	// vhost-user-vsock backend; QEMU connects to it at start.
	VhostUserVsockSocket string

	Pmem   []PmemDevice
	Drives []Drive

	// PCIeRootPorts adds that many empty pcie-root-port devices, with ids
	// PCIeRootPortID(0..n-1): on q35 only devices behind a root port can be
	// hot-plugged (QMP device_add with "bus": PCIeRootPortID(i)).
	PCIeRootPorts int

	// ExtraArgs are appended to the QEMU command line.
	ExtraArgs []string

	// Dir holds serial.log, qemu.log and qmp.sock. If empty a temporary
	// directory is created and removed by Close; a given Dir is kept (only
	// the socket is removed).
	Dir string
}

// QBoot is Debian's qboot image (qemu-system-data): firmware that does
// little more than hand over to the -kernel image, ~0.06 s of QEMU CPU
// less per boot than SeaBIOS under TCG.
const QBoot = "/usr/share/qemu/qboot.rom"

// LeanQ35 is q35 without the chipset functions a Keel guest never uses:
// the ICH9 SATA controller and SMBus (two PCI functions fewer for QEMU to
// build and for the guest to enumerate), the VMware backdoor port, the
// PS/2 controller (Keel's kernel has no i8042 driver) and SMM, which only
// firmware uses (qboot does not). The boot path of vm-demo and
// tests/bench/vmbench; put it in Config.Machine.
const LeanQ35 = "q35,sata=off,smbus=off,vmport=off,i8042=off,smm=off"

// QBootAvailable says whether QBoot is installed.
func QBootAvailable() bool { return regularFile(QBoot) == nil }

// Binary returns the QEMU executable Launch uses when Config.Binary is empty.
func Binary() string {
	if b := os.Getenv("KEEL_QEMU"); b != "" {
		return b
	}
	return "qemu-system-x86_64"
}

// withDefaults returns cfg with zero fields defaulted and validated, plus
// the pmem file sizes.
func (cfg Config) withDefaults() (Config, []int64, error) {
	if cfg.Binary == "" {
		cfg.Binary = Binary()
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = DefaultMemoryMiB
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = DefaultCPUs
	}
	if cfg.CPUModel == "" {
		cfg.CPUModel = DefaultCPUModel
	}
	var errs []error
	if cfg.Kernel == "" {
		errs = append(errs, errors.New("a kernel path is required"))
	} else if err := regularFile(cfg.Kernel); err != nil {
		errs = append(errs, fmt.Errorf("kernel: %w", err))
	}
	if cfg.Initrd != "" {
		if err := regularFile(cfg.Initrd); err != nil {
			errs = append(errs, fmt.Errorf("initrd: %w", err))
		}
	}
	if cfg.Firmware != "" {
		if err := regularFile(cfg.Firmware); err != nil {
			errs = append(errs, fmt.Errorf("firmware: %w", err))
		}
	}
	if cfg.MemoryMiB < 64 {
		errs = append(errs, fmt.Errorf("MemoryMiB %d is below 64", cfg.MemoryMiB))
	}
	if cfg.CPUs < 1 || cfg.CPUs > 64 {
		errs = append(errs, fmt.Errorf("CPUs %d out of range 1..64", cfg.CPUs))
	}
	if cfg.PCIeRootPorts < 0 || cfg.PCIeRootPorts > maxRootPorts {
		errs = append(errs, fmt.Errorf("PCIeRootPorts %d out of range 0..%d", cfg.PCIeRootPorts, maxRootPorts))
	}
	if cfg.HotplugSlots < 0 || cfg.MaxMemMiB < 0 {
		errs = append(errs, errors.New("negative HotplugSlots or MaxMemMiB"))
	}
	sizes := make([]int64, len(cfg.Pmem))
	var pmemMiB int
	for i, p := range cfg.Pmem {
		if p.Kind != VirtioPmem && p.Kind != NVDIMM {
			errs = append(errs, fmt.Errorf("pmem %d: kind %q is not %q or %q", i, p.Kind, VirtioPmem, NVDIMM))
		}
		st, err := os.Stat(p.Path)
		if err != nil {
			errs = append(errs, fmt.Errorf("pmem %d: %w", i, err))
			continue
		}
		if !st.Mode().IsRegular() || st.Size() == 0 || st.Size()%pmemAlign != 0 {
			errs = append(errs, fmt.Errorf("pmem %d: %s must be a non-empty regular file sized in 2 MiB units (is %d bytes)", i, p.Path, st.Size()))
			continue
		}
		sizes[i] = st.Size()
		pmemMiB += int(st.Size() >> 20)
	}
	for i, d := range cfg.Drives {
		if err := regularFile(d.Path); err != nil {
			errs = append(errs, fmt.Errorf("drive %d: %w", i, err))
		}
		if d.Format == "" {
			cfg.Drives[i].Format = "raw"
		}
	}
	if len(cfg.Pmem) > 0 || cfg.HotplugSlots > 0 || cfg.MaxMemMiB > 0 {
		need := cfg.MemoryMiB + pmemMiB
		if cfg.MaxMemMiB == 0 {
			cfg.MaxMemMiB = need + hotplugHeadroomMiB
		} else if cfg.MaxMemMiB < need {
			errs = append(errs, fmt.Errorf("MaxMemMiB %d is below memory plus pmem (%d)", cfg.MaxMemMiB, need))
		}
		if min := len(cfg.Pmem) + 1; cfg.HotplugSlots < min {
			cfg.HotplugSlots = min
		}
	}
	if len(cfg.VhostUserVsockSocket) > 107 {
		errs = append(errs, fmt.Errorf("vhost-user socket path longer than 107 bytes: %s", cfg.VhostUserVsockSocket))
	}
	if len(errs) > 0 {
		return cfg, nil, fmt.Errorf("invalid VM config: %w", errors.Join(errs...))
	}
	return cfg, sizes, nil
}

func regularFile(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", p)
	}
	return nil
}

// optValue escapes a value for QEMU's key=value option syntax, where a
// literal comma is written twice.
func optValue(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// args builds the QEMU command line for a defaulted config.
func (cfg Config) args(sizes []int64, serialPath, qmpPath string) []string {
	machine := cfg.Machine
	if machine == "" {
		machine = "q35"
	}
	machine += ",accel=tcg,memory-backend=mem"
	for _, p := range cfg.Pmem {
		if p.Kind == NVDIMM {
			machine += ",nvdimm=on"
			break
		}
	}
	mem := strconv.Itoa(cfg.MemoryMiB) + "M"
	m := mem
	if cfg.MaxMemMiB > 0 {
		m += ",slots=" + strconv.Itoa(cfg.HotplugSlots) + ",maxmem=" + strconv.Itoa(cfg.MaxMemMiB) + "M"
	}
	a := []string{
		"-name", "keel-vm",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-machine", machine,
		"-cpu", cfg.CPUModel,
		"-smp", strconv.Itoa(cfg.CPUs),
		"-m", m,
		// vhost-user backends map guest RAM, so it must be a shareable fd.
		"-object", "memory-backend-memfd,id=mem,size=" + mem + ",share=on",
		"-kernel", cfg.Kernel,
		"-chardev", "file,id=serial0,path=" + optValue(serialPath),
		"-serial", "chardev:serial0",
		"-qmp", "unix:" + optValue(qmpPath) + ",server=on,wait=off",
	}
	if cfg.Initrd != "" {
		a = append(a, "-initrd", cfg.Initrd)
	}
	if cfg.Firmware != "" {
		a = append(a, "-bios", cfg.Firmware)
	}
	if cfg.Append != "" {
		a = append(a, "-append", cfg.Append)
	}
	if cfg.VhostUserVsockSocket != "" {
		a = append(a,
			"-chardev", "socket,id=vsk,path="+optValue(cfg.VhostUserVsockSocket),
			"-device", "vhost-user-vsock-pci,chardev=vsk,id=vsock0")
	}
	for i, p := range cfg.Pmem {
		be := fmt.Sprintf("memory-backend-file,id=pmem%d,mem-path=%s,size=%d,share=on", i, optValue(p.Path), sizes[i])
		if p.ReadOnly {
			be += ",readonly=on"
		}
		a = append(a, "-object", be)
		switch p.Kind {
		case NVDIMM:
			dev := fmt.Sprintf("nvdimm,id=nv%d,memdev=pmem%d", i, i)
			if p.ReadOnly {
				dev += ",unarmed=on"
			}
			a = append(a, "-device", dev)
		case VirtioPmem:
			a = append(a, "-device", fmt.Sprintf("virtio-pmem-pci,id=vpmem%d,memdev=pmem%d", i, i))
		}
	}
	for i := 0; i < cfg.PCIeRootPorts; i++ {
		// Chassis/slot numbers must be unique per port; start at 1.
		a = append(a, "-device", fmt.Sprintf("pcie-root-port,id=%s,bus=pcie.0,chassis=%d,slot=%d", PCIeRootPortID(i), i+1, i+1))
	}
	for i, d := range cfg.Drives {
		dr := fmt.Sprintf("file=%s,if=none,id=drive%d,format=%s", optValue(d.Path), i, optValue(d.Format))
		if d.ReadOnly {
			dr += ",readonly=on"
		}
		a = append(a, "-drive", dr, "-device", fmt.Sprintf("virtio-blk-pci,drive=drive%d,id=blk%d", i, i))
	}
	return append(a, cfg.ExtraArgs...)
}
