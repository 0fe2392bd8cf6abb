// Package daxtest holds VM tests that measure what DAX buys a Keel guest:
// the agent boots as PID 1, switches root to a rootfs image on an NVDIMM
// (agent.rootfs=/dev/pmem0) and runs containers whose rootfs lives inside
// that image. With dax=always the guest maps the image's pages straight
// from the host file, so reading them does not grow the guest page cache;
// the same image mounted with dax=never does.
//
// The default run boots two guests (DAX and not) from one image; the
// Debian container test is in the slow tier (KEEL_SLOW_TESTS=1).
package daxtest
