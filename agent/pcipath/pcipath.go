// Package pcipath resolves Kata's PCI paths to guest devices.
//
// A PCI path names a device by the slots that lead to it from the root
// bus, as the host sees them when it hot-plugs: "02/00" is slot 0 on the
// bus behind the bridge (or PCIe root port) in slot 2 of the root bus.
// Kata's runtime sends it as Storage.source for the "blk" driver,
// Device.id for "blk"/"vfio-pci", Interface.devicePath for NICs, and in
// AddSwap. Each element is "SS" or "SS.F" (hex slot 00-1f, function 0-7).
//
// The bus numbers in between are assigned by the guest, so a path is
// resolved in sysfs (Resolve), or matched against a uevent's DEVPATH
// (whose components are exactly the chain of bridges). The Matchers here
// feed agent/uevent.Registry.Wait:
//
//	dev, err := reg.Wait(ctx, path.Block(), 0) // dev.DevName == "vda"
package pcipath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// RootBus is the sysfs devpath of the root bus (domain 0, bus 0), under
// which Kata's paths start, on x86 (q35, pc) and arm64 virt alike.
const RootBus = "/devices/pci0000:00"

// MaxDepth bounds the number of elements of a path (bridges nest a few
// levels deep in practice; a PCI hierarchy cannot exceed 256 buses).
const MaxDepth = 32

// ErrInvalid classifies every parse error.
var ErrInvalid = errors.New("invalid PCI path")

// SlotFn is one element of a path: a device (slot) and function number on
// one bus.
type SlotFn struct {
	Slot     uint8 // 0x00-0x1f
	Function uint8 // 0-7
}

func (s SlotFn) String() string {
	if s.Function == 0 {
		return fmt.Sprintf("%02x", s.Slot)
	}
	return fmt.Sprintf("%02x.%x", s.Slot, s.Function)
}

// Path is a parsed PCI path, root bus first. It is never empty.
type Path []SlotFn

// Parse reads "bb/dd[/dd...]" where each element is SS or SS.F in hex.
func Parse(s string) (Path, error) {
	if s == "" {
		return nil, fmt.Errorf("%w: empty", ErrInvalid)
	}
	elems := strings.Split(s, "/")
	if len(elems) > MaxDepth {
		return nil, fmt.Errorf("%w %q: more than %d elements", ErrInvalid, trunc(s), MaxDepth)
	}
	p := make(Path, 0, len(elems))
	for _, e := range elems {
		slot, fn, hasFn := strings.Cut(e, ".")
		sv, err := parseHex(slot, 2, 0x1f)
		if err != nil {
			return nil, fmt.Errorf("%w %q: slot %q: %v", ErrInvalid, trunc(s), trunc(e), err)
		}
		var fv uint8
		if hasFn {
			if fv, err = parseHex(fn, 1, 7); err != nil {
				return nil, fmt.Errorf("%w %q: function of %q: %v", ErrInvalid, trunc(s), trunc(e), err)
			}
		}
		p = append(p, SlotFn{Slot: sv, Function: fv})
	}
	return p, nil
}

func parseHex(s string, maxLen int, max uint64) (uint8, error) {
	if s == "" || len(s) > maxLen {
		return 0, fmt.Errorf("want 1 to %d hex digits", maxLen)
	}
	v, err := strconv.ParseUint(s, 16, 8)
	if err != nil || v > max {
		return 0, fmt.Errorf("want hex 0-%x", max)
	}
	return uint8(v), nil
}

// String formats p as Kata's runtime does ("02/00"; "SS.F" for a
// non-zero function).
func (p Path) String() string {
	parts := make([]string, len(p))
	for i, s := range p {
		parts[i] = s.String()
	}
	return strings.Join(parts, "/")
}

// Resolve returns the sysfs devpath of the device at p (relative to the
// sysfs mount point sysfs, like a uevent's DEVPATH), following each
// bridge to the bus behind it. It fails if a bridge on the way is not
// there (yet); the device itself need not exist.
func (p Path) Resolve(sysfs string) (string, error) {
	if len(p) == 0 {
		return "", fmt.Errorf("%w: empty", ErrInvalid)
	}
	devpath := RootBus
	bus := "0000:00"
	for i, s := range p {
		devpath += fmt.Sprintf("/%s:%02x.%x", bus, s.Slot, s.Function)
		if i == len(p)-1 {
			break
		}
		next, err := busBehind(filepath.Join(sysfs, devpath))
		if err != nil {
			return "", fmt.Errorf("unable to resolve PCI path %s at element %d (%s): %w", p, i, devpath, err)
		}
		bus = next
	}
	return devpath, nil
}

// busBehind names the secondary bus of the bridge at dir ("0000:01").
func busBehind(dir string) (string, error) {
	ents, err := os.ReadDir(filepath.Join(dir, "pci_bus"))
	if err != nil {
		return "", fmt.Errorf("not a bridge, or not there: %w", err)
	}
	if len(ents) != 1 {
		return "", fmt.Errorf("bridge has %d buses behind it, want 1", len(ents))
	}
	return ents[0].Name(), nil
}

// rest matches devpath against p: it reports whether devpath is the
// device at p or below it, and returns what follows the device ("" for
// the device itself, "/virtio3/block/vda" for its disk). Bus numbers are
// not compared: each PCI component of a devpath is on the bus behind the
// previous one, so the slots alone identify the path.
func (p Path) rest(devpath string) (string, bool) {
	r, ok := strings.CutPrefix(devpath, RootBus+"/")
	if !ok {
		return "", false
	}
	for i, s := range p {
		comp, after, more := strings.Cut(r, "/")
		// "DDDD:BB:SS.F"
		if len(comp) != 12 || comp[4] != ':' || comp[7] != ':' || comp[10] != '.' {
			return "", false
		}
		if i == 0 && comp[:7] != "0000:00" {
			return "", false
		}
		if comp[8:] != fmt.Sprintf("%02x.%x", s.Slot, s.Function) {
			return "", false
		}
		if i == len(p)-1 {
			if !more {
				return "", true
			}
			return "/" + after, true
		}
		if !more {
			return "", false
		}
		r = after
	}
	return "", false
}

func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
