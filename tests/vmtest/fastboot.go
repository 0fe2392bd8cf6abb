package vmtest

import "github.com/keelvm/keel/tests/vmm/qemu"

// DAXRootArgs is the kernel command line of a guest booting Keel's kernel
// straight from a DAX image on /dev/pmem0 (every driver built in, no
// initramfs), as vm-demo and tests/bench/vmbench boot it. The last three
// only drop waits that TCG makes long or flaky:
//
//   - noapictimer: with no TSC-deadline timer under TCG the kernel
//     calibrates the local APIC timer against the PIT for ~0.2 s, 56% of
//     its boot to init in guest time (icount: init at 0.158 instead of
//     0.362 s). The one vCPU ticks from the HPET instead. Not for KVM
//     guests: there the calibration is skipped anyway.
//   - no_timer_check: the IO-APIC timer check spins until 4 ticks arrive
//     or 160M TSC cycles pass (76 ms at this host's 2.1 GHz TSC). Under
//     TCG on a busy host the ticks come late, the check fails, spins
//     again and routes IRQ0 through the 8259A instead; under -icount it
//     always passes. Kata's guests skip it the same way.
//   - acpi_pm_good: skips the PM timer monotonicity check, whose udelay
//     loop alone waits 4.5 ms; QEMU's PM timer is not a buggy chipset.
var DAXRootArgs = []string{"root=/dev/pmem0", "rootfstype=ext4", "rootflags=dax=always", "ro", "init=/sbin/init",
	"noapictimer", "no_timer_check", "acpi_pm_good"}

// FastQEMU is the QEMU set-up of those guests: qboot (when installed)
// instead of SeaBIOS, since there is nothing to set up but the -kernel
// hand-over, on qemu.LeanQ35.
func FastQEMU(c *qemu.Config) {
	if qemu.QBootAvailable() {
		c.Firmware = qemu.QBoot
	}
	c.Machine = qemu.LeanQ35
}
