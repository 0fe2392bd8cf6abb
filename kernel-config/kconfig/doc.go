// Package kconfig reads Linux kernel configuration fragments and .config
// files, merges fragments, and proves that a requested configuration
// survived Kconfig's dependency resolution.
//
// The kernel's own tools silently drop an option whose dependencies are not
// met: `make olddefconfig` rewrites `CONFIG_X=y` to `# CONFIG_X is not set`
// and exits 0. Keel boots from a DAX root with no initramfs and no modules,
// so a dropped option is an unbootable guest found late. Prove compares the
// request with the final .config and, with a Tree read from the kernel's
// Kconfig files, names the unmet dependency of every dropped option.
//
// Names are kept without the CONFIG_ prefix. Values are "y", "m", "n" (for
// `# CONFIG_X is not set`) or the literal text of a string ("\"quoted\""),
// decimal or hex value.
package kconfig
