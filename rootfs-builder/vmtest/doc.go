// Package vmtest proves rootfs-builder's images in a real guest: it boots
// Debian's kernel under QEMU (TCG) with keel-rootfs images attached as
// `-device nvdimm` and checks that the DAX-wrapped ones mount with
// dax=always while a bare filesystem on the same device type does not.
// The tests skip when QEMU is missing and under `go test -short`.
package vmtest
