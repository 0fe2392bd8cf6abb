package scsi

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/keelvm/keel/agent/uevent"
)

func TestParseAddr(t *testing.T) {
	if a, err := ParseAddr("0:1"); err != nil || a != (Addr{0, 1}) || a.String() != "0:1" {
		t.Errorf("0:1 -> %v %v", a, err)
	}
	for _, bad := range []string{"", "1", "a:1", "1:b", "1:2:3", "70000:0", "-1:0", "0:-1"} {
		if _, err := ParseAddr(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestDiskMatch(t *testing.T) {
	m := Disk(Addr{0, 1})
	base := "/devices/pci0000:00/0000:00:03.0/0000:02:00.0/virtio4/host0/target0:0:0/"
	for _, c := range []struct {
		devpath, devtype, name string
		want                   bool
	}{
		{base + "0:0:0:1/block/sda", "disk", "sda", true},
		{base + "0:0:0:1/block/sda/sda1", "partition", "sda1", false},
		{base + "0:0:0:2/block/sdb", "disk", "sdb", false},
		{base + "0:0:10:1/block/sdc", "disk", "sdc", false},
		{base + "0:1:0:1/block/sdd", "disk", "sdd", false}, // channel 1
	} {
		ev := &uevent.Event{Action: uevent.ActionAdd, Subsystem: "block", DevPath: c.devpath, DevType: c.devtype, DevName: c.name}
		if got := m.Match(ev); got != c.want {
			t.Errorf("%s: %v, want %v", c.devpath, got, c.want)
		}
	}
}

// TestDiskPresentAndScan: in a fake sysfs tree the disk already there is
// found through the scsi bus links, and a scan writes "0 target lun" to
// every host.
func TestDiskPresentAndScan(t *testing.T) {
	sysfs := t.TempDir()
	dev := filepath.Join(sysfs, "devices/pci0000:00/0000:00:03.0/virtio4/host0/target0:0:0/0:0:0:1")
	for _, d := range []string{filepath.Join(dev, "block/sda"), filepath.Join(sysfs, "bus/scsi/devices"), filepath.Join(sysfs, "class/scsi_host/host0"), filepath.Join(sysfs, "class/scsi_host/host3")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(dev, filepath.Join(sysfs, "bus/scsi/devices/0:0:0:1")); err != nil {
		t.Fatal(err)
	}
	got := Disk(Addr{0, 1}).Present(sysfs)
	if len(got) != 1 || got[0] != "/devices/pci0000:00/0000:00:03.0/virtio4/host0/target0:0:0/0:0:0:1/block/sda" {
		t.Errorf("Present = %v", got)
	}
	if got := Disk(Addr{0, 2}).Present(sysfs); len(got) != 0 {
		t.Errorf("Present(0:2) = %v", got)
	}
	for _, h := range []string{"host0", "host3"} {
		if err := os.WriteFile(filepath.Join(sysfs, "class/scsi_host", h, "scan"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := Scan(sysfs, Addr{2, 7}); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"host0", "host3"} {
		if b, _ := os.ReadFile(filepath.Join(sysfs, "class/scsi_host", h, "scan")); string(b) != "0 2 7" {
			t.Errorf("%s scan got %q", h, b)
		}
	}
	if err := Scan(t.TempDir(), Addr{0, 1}); !errors.Is(err, ErrNoHost) {
		t.Errorf("no hosts: %v", err)
	}
}
