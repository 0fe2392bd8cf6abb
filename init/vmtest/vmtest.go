// Package vmtest boots init/boot as PID 1 of a real (TCG) QEMU guest with
// Debian's kernel: from an initramfs, and switched onto an ext4 root on
// virtio-pmem with DAX. It holds only tests; they skip without QEMU.
package vmtest
