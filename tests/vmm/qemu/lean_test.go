package qemu

import (
	"context"
	"testing"
	"time"

	"github.com/keelvm/keel/tests/vmm/qmp"
)

// PCI classes (base class << 8 | subclass) of the ICH9 functions LeanQ35
// leaves out.
const (
	classSATA  = 0x0106
	classSMBus = 0x0c05
)

// TestLeanQ35DropsUnusedFunctions launches plain q35 and LeanQ35 (stopped
// before the first guest instruction: only the machine is compared) and
// reads the PCI functions back over QMP: plain q35 has the SATA and SMBus
// functions, LeanQ35 has neither and still has its host bridge.
func TestLeanQ35DropsUnusedFunctions(t *testing.T) {
	g := guest(t)
	classes := func(machine string) map[int]bool {
		vm := launch(t, Config{Kernel: g.Image, Machine: machine, ExtraArgs: []string{"-S"}})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		buses, err := vm.QMP().QueryPCI(ctx)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[int]bool{}
		var walk func([]qmp.PCIDevice)
		walk = func(ds []qmp.PCIDevice) {
			for _, d := range ds {
				seen[d.ClassInfo.Class] = true
				if d.PCIBridge != nil {
					walk(d.PCIBridge.Devices)
				}
			}
		}
		for _, b := range buses {
			walk(b.Devices)
		}
		return seen
	}
	plain := classes("q35")
	if !plain[classSATA] || !plain[classSMBus] {
		t.Fatalf("plain q35 lacks SATA or SMBus (classes %v): the check below would prove nothing", plain)
	}
	lean := classes(LeanQ35)
	if lean[classSATA] || lean[classSMBus] {
		t.Errorf("%s still has SATA or SMBus: classes %v", LeanQ35, lean)
	}
	if !lean[0x0600] {
		t.Errorf("%s has no host bridge: classes %v", LeanQ35, lean)
	}
}
