// Command vfioprobe uses a PCI function through VFIO the way a userspace
// driver (DPDK, a VMM) starts: it opens the VFIO container and the
// function's group, attaches them with the IOMMU model asked for, gets the
// device's fd and reads the function's vendor and device id from its
// config space region. With the type1 model it also maps a buffer for the
// device's DMA through the IOMMU and unmaps it. The VM tests run it inside
// a container to show that a device the agent passed really works there.
//
// Usage: vfioprobe type1|noiommu /dev/vfio/<group> <guest BDF>
// Output: "api 0", "viable", "vendor 1af4 device 1044", ["dma mapped 65536"].
package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// VFIO ioctls (linux/vfio.h): _IO(';', 100 + n).
const (
	vfioGetAPIVersion     = 0x3b64
	vfioCheckExtension    = 0x3b65
	vfioSetIOMMU          = 0x3b66
	vfioGroupGetStatus    = 0x3b67
	vfioGroupSetContainer = 0x3b68
	vfioGroupGetDeviceFD  = 0x3b6a
	vfioDeviceGetRegion   = 0x3b6c
	vfioIOMMUMapDMA       = 0x3b71
	vfioIOMMUUnmapDMA     = 0x3b72

	vfioType1IOMMU   = 1
	vfioNoIOMMUIOMMU = 8

	vfioGroupFlagsViable = 1
	// VFIO_PCI_CONFIG_REGION_INDEX
	configRegion = 7
)

type groupStatus struct{ argsz, flags uint32 }

type regionInfo struct {
	argsz, flags, index, capOffset uint32
	size, offset                   uint64
}

type dmaMap struct {
	argsz, flags      uint32
	vaddr, iova, size uint64
}

type dmaUnmap struct {
	argsz, flags uint32
	iova, size   uint64
}

// ioctl passes an integer argument.
func ioctl(fd int, req, arg uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

// ioctlPtr passes a pointer; the conversion happens in the Syscall call
// expression, which keeps the pointee alive and in place.
func ioctlPtr(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "vfioprobe:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) != 3 || (args[0] != "type1" && args[0] != "noiommu") {
		return fmt.Errorf("usage: vfioprobe type1|noiommu /dev/vfio/<group> <BDF>")
	}
	model := uintptr(vfioType1IOMMU)
	if args[0] == "noiommu" {
		model = vfioNoIOMMUIOMMU
	}
	container, err := unix.Open("/dev/vfio/vfio", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/vfio/vfio: %w", err)
	}
	v, err := ioctl(container, vfioGetAPIVersion, 0)
	if err != nil {
		return fmt.Errorf("VFIO_GET_API_VERSION: %w", err)
	}
	fmt.Println("api", v)
	if ok, err := ioctl(container, vfioCheckExtension, model); err != nil || ok == 0 {
		return fmt.Errorf("VFIO_CHECK_EXTENSION(%s) = %d: %v", args[0], ok, err)
	}
	group, err := unix.Open(args[1], unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", args[1], err)
	}
	st := groupStatus{argsz: uint32(unsafe.Sizeof(groupStatus{}))}
	if _, err := ioctlPtr(group, vfioGroupGetStatus, unsafe.Pointer(&st)); err != nil {
		return fmt.Errorf("VFIO_GROUP_GET_STATUS: %w", err)
	}
	if st.flags&vfioGroupFlagsViable == 0 {
		return fmt.Errorf("group %s is not viable (flags %#x): another function of it is not bound to vfio-pci", args[1], st.flags)
	}
	fmt.Println("viable")
	cfd := int32(container)
	if _, err := ioctlPtr(group, vfioGroupSetContainer, unsafe.Pointer(&cfd)); err != nil {
		return fmt.Errorf("VFIO_GROUP_SET_CONTAINER: %w", err)
	}
	if _, err := ioctl(container, vfioSetIOMMU, model); err != nil {
		return fmt.Errorf("VFIO_SET_IOMMU(%s): %w", args[0], err)
	}
	name, err := unix.BytePtrFromString(args[2])
	if err != nil {
		return err
	}
	dev, err := ioctlPtr(group, vfioGroupGetDeviceFD, unsafe.Pointer(name))
	if err != nil {
		return fmt.Errorf("VFIO_GROUP_GET_DEVICE_FD(%s): %w", args[2], err)
	}
	ri := regionInfo{argsz: uint32(unsafe.Sizeof(regionInfo{})), index: configRegion}
	if _, err := ioctlPtr(int(dev), vfioDeviceGetRegion, unsafe.Pointer(&ri)); err != nil {
		return fmt.Errorf("VFIO_DEVICE_GET_REGION_INFO(config): %w", err)
	}
	id := make([]byte, 4)
	if _, err := unix.Pread(int(dev), id, int64(ri.offset)); err != nil {
		return fmt.Errorf("read config space: %w", err)
	}
	fmt.Printf("vendor %04x device %04x\n", binary.LittleEndian.Uint16(id), binary.LittleEndian.Uint16(id[2:]))
	if model != vfioType1IOMMU {
		return nil
	}
	const size = 64 << 10
	buf, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	m := dmaMap{argsz: uint32(unsafe.Sizeof(dmaMap{})), flags: 3, vaddr: uint64(uintptr(unsafe.Pointer(&buf[0]))), iova: 1 << 30, size: size}
	if _, err := ioctlPtr(container, vfioIOMMUMapDMA, unsafe.Pointer(&m)); err != nil {
		return fmt.Errorf("VFIO_IOMMU_MAP_DMA: %w", err)
	}
	u := dmaUnmap{argsz: uint32(unsafe.Sizeof(dmaUnmap{})), iova: 1 << 30, size: size}
	if _, err := ioctlPtr(container, vfioIOMMUUnmapDMA, unsafe.Pointer(&u)); err != nil {
		return fmt.Errorf("VFIO_IOMMU_UNMAP_DMA: %w", err)
	}
	fmt.Println("dma mapped", u.size)
	return nil
}
