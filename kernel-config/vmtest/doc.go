// Package vmtest boots the kernel built by `keel-kernel build` under QEMU
// straight from a DAX root, with no initramfs and no modules:
// root=/dev/pmem0 rootflags=dax ro on virtio-pmem and on an NVDIMM fsdax
// namespace. The tests skip unless that kernel is in the cache (they never
// build it: that takes many minutes) or KEEL_KERNEL_IMAGE names one.
package vmtest
