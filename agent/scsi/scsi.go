// Package scsi finds disks on a virtio-scsi controller by Kata's SCSI
// address, "target:lun" (the runtime puts every disk on channel 0 of the
// sandbox's one controller), for the "scsi" storage driver and device
// type: Disk is an agent/uevent matcher whose every look in sysfs first
// asks the hosts to scan for the address, since a disk added to a running
// controller is not always announced and a controller hot-plugged just
// before may have no host yet.
package scsi

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/keelvm/keel/agent/uevent"
)

// Errors.
var (
	// ErrInvalid marks a malformed address.
	ErrInvalid = errors.New("invalid SCSI address")
	// ErrNoHost: no SCSI host to scan yet (a controller hot-added just
	// before scans its bus itself once it comes up).
	ErrNoHost = errors.New("no SCSI host")
)

// Addr is a SCSI target and LUN on channel 0.
type Addr struct {
	Target uint16
	LUN    uint32
}

// ParseAddr reads Kata's "target:lun" (decimal).
func ParseAddr(s string) (Addr, error) {
	a, b, ok := strings.Cut(s, ":")
	id, err1 := strconv.ParseUint(a, 10, 16)
	lun, err2 := strconv.ParseUint(b, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return Addr{}, fmt.Errorf("%w %q: want <target>:<lun>, like 0:1", ErrInvalid, s)
	}
	return Addr{Target: uint16(id), LUN: uint32(lun)}, nil
}

func (a Addr) String() string { return fmt.Sprintf("%d:%d", a.Target, a.LUN) }

// Scan asks every SCSI host to scan channel 0, a's target and LUN.
func Scan(sysfs string, a Addr) error {
	if sysfs == "" {
		sysfs = uevent.DefaultSysfs
	}
	hosts, _ := filepath.Glob(filepath.Join(sysfs, "class/scsi_host/host*/scan"))
	if len(hosts) == 0 {
		return fmt.Errorf("unable to scan for SCSI disk %s: %w", a, ErrNoHost)
	}
	for _, h := range hosts {
		if err := os.WriteFile(h, []byte(fmt.Sprintf("0 %d %d", a.Target, a.LUN)), 0); err != nil {
			return fmt.Errorf("unable to scan %s: %w", h, err)
		}
	}
	return nil
}

// Disk matches the whole disk at H:0:target:lun on any host H; the event's
// DevName is its name under /dev.
func Disk(a Addr) uevent.Matcher {
	suffix := fmt.Sprintf(":0:%d:%d", a.Target, a.LUN)
	return uevent.Matcher{
		What: "SCSI disk " + a.String(),
		Match: func(ev *uevent.Event) bool {
			if ev.Subsystem != "block" || ev.DevType != "disk" || ev.DevName == "" || ev.Action != uevent.ActionAdd {
				return false
			}
			dir, _, ok := strings.Cut(ev.DevPath, "/block/")
			return ok && strings.HasSuffix(dir, suffix) && strings.Count(filepath.Base(dir), ":") == 3
		},
		Present: func(sysfs string) []string {
			_ = Scan(sysfs, a) // no host yet: the next look scans again
			links, _ := filepath.Glob(filepath.Join(sysfs, "bus/scsi/devices/*"+suffix, "block/*"))
			root, err := filepath.EvalSymlinks(sysfs)
			if err != nil {
				return nil
			}
			var out []string
			for _, l := range links {
				if real, err := filepath.EvalSymlinks(l); err == nil {
					if rel, err := filepath.Rel(root, real); err == nil && !strings.HasPrefix(rel, "..") {
						out = append(out, "/"+rel)
					}
				}
			}
			return out
		},
	}
}
