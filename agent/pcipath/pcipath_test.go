package pcipath

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/uevent"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]Path{
		"02":            {{Slot: 2}},
		"02/00":         {{Slot: 2}, {Slot: 0}},
		"1f.7/0a/3":     {{Slot: 0x1f, Function: 7}, {Slot: 0xa}, {Slot: 3}},
		"02.0/00.0":     {{Slot: 2}, {Slot: 0}},
		"01/02/03/04/5": {{Slot: 1}, {Slot: 2}, {Slot: 3}, {Slot: 4}, {Slot: 5}},
	} {
		got, err := Parse(in)
		if err != nil {
			t.Errorf("Parse(%q): %v", in, err)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Parse(%q) = %v, want %v", in, got, want)
		}
	}
	for _, bad := range []string{"", "/", "02/", "/02", "20", "00.8", "xyz", "002", "02.00", "-1", "02//00", " 02", "0x2",
		"00/00/00/00/00/00/00/00/00/00/00/00/00/00/00/00/00/00/00/00/00/00/00/00/00/00/00/00/00/00/00/00/00"} {
		if p, err := Parse(bad); err == nil || !errors.Is(err, ErrInvalid) {
			t.Errorf("Parse(%q) = %v, %v: want ErrInvalid", bad, p, err)
		}
	}
	if s := (Path{{Slot: 2}, {Slot: 0x1f, Function: 3}}).String(); s != "02/1f.3" {
		t.Errorf("String = %q", s)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"02/00", "1f.7", "00.8", "//", "0a/0b/0c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := Parse(s)
		if err != nil {
			return
		}
		if len(p) == 0 || len(p) > MaxDepth {
			t.Fatalf("Parse(%q) = %v", s, p)
		}
		again, err := Parse(p.String())
		if err != nil || !reflect.DeepEqual(again, p) {
			t.Fatalf("round trip %q -> %q: %v %v", s, p.String(), again, err)
		}
	})
}

// fakeSysfs builds the part of sysfs a q35 guest has for a virtio-blk
// disk in a pcie-root-port at slot 2 (bus 1), and a virtio-pmem behind
// two bridges (03/01/00).
func fakeSysfs(t *testing.T) string {
	root := t.TempDir()
	dev := func(devpath, subsystem, uevent string) {
		dir := filepath.Join(root, devpath)
		must(t, os.MkdirAll(dir, 0o755))
		must(t, os.WriteFile(filepath.Join(dir, "uevent"), []byte(uevent), 0o644))
		os.MkdirAll(filepath.Join(root, "class", subsystem), 0o755)
		must(t, os.Symlink(filepath.Join(root, "class", subsystem), filepath.Join(dir, "subsystem")))
	}
	bridge := func(devpath, bus string) {
		dev(devpath, "pci", "DRIVER=pcieport\n")
		must(t, os.MkdirAll(filepath.Join(root, devpath, "pci_bus", bus), 0o755))
	}
	bridge("/devices/pci0000:00/0000:00:02.0", "0000:01")
	dev("/devices/pci0000:00/0000:00:02.0/0000:01:00.0", "pci", "DRIVER=virtio-pci\n")
	dev("/devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio3/block/vda", "block", "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n")
	dev("/devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio3/block/vda/vda1", "block", "DEVNAME=vda1\nDEVTYPE=partition\n")
	bridge("/devices/pci0000:00/0000:00:03.0", "0000:02")
	bridge("/devices/pci0000:00/0000:00:03.0/0000:02:01.0", "0000:05")
	dev("/devices/pci0000:00/0000:00:03.0/0000:02:01.0/0000:05:00.0/virtio4/ndbus0/region0/namespace0.0/block/pmem0", "block", "DEVNAME=pmem0\nDEVTYPE=disk\n")
	dev("/devices/pci0000:00/0000:00:04.0/virtio1/net/eth1", "net", "INTERFACE=eth1\nIFINDEX=3\n")
	return root
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestResolve(t *testing.T) {
	sysfs := fakeSysfs(t)
	for in, want := range map[string]string{
		"02":       "/devices/pci0000:00/0000:00:02.0",
		"02/00":    "/devices/pci0000:00/0000:00:02.0/0000:01:00.0",
		"03/01/00": "/devices/pci0000:00/0000:00:03.0/0000:02:01.0/0000:05:00.0",
		"1f.2":     "/devices/pci0000:00/0000:00:1f.2",
	} {
		p, _ := Parse(in)
		got, err := p.Resolve(sysfs)
		if err != nil || got != want {
			t.Errorf("Resolve(%s) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"04/00", "07/00"} { // 04 is not a bridge, 07 not there
		p, _ := Parse(bad)
		if got, err := p.Resolve(sysfs); err == nil {
			t.Errorf("Resolve(%s) = %q", bad, got)
		}
	}
}

func TestMatchersFindPresentDevices(t *testing.T) {
	sysfs := fakeSysfs(t)
	reg := uevent.NewRegistry(sysfs, time.Second)
	wait := func(m uevent.Matcher) uevent.Event {
		t.Helper()
		ev, err := reg.Wait(context.Background(), m, 0)
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	p := mustParse(t, "02/00")
	if ev := wait(p.Block()); ev.DevName != "vda" || ev.Major != "254" {
		t.Errorf("Block: %+v", ev)
	}
	if ev := wait(p.Device()); ev.DevPath != "/devices/pci0000:00/0000:00:02.0/0000:01:00.0" || ev.Driver != "virtio-pci" {
		t.Errorf("Device: %+v", ev)
	}
	if ev := wait(mustParse(t, "03/01/00").Pmem()); ev.DevName != "pmem0" {
		t.Errorf("Pmem: %+v", ev)
	}
	if ev := wait(mustParse(t, "04").Net()); ev.Interface != "eth1" {
		t.Errorf("Net: %+v", ev)
	}
	// Nothing at 03/01/01, and 02/00 has no pmem: both time out.
	for _, m := range []uevent.Matcher{mustParse(t, "03/01/01").Block(), p.Pmem()} {
		if _, err := reg.Wait(context.Background(), m, 100*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: %v", m.What, err)
		}
	}
}

func TestMatchEvents(t *testing.T) {
	blk := mustParse(t, "02/00").Block()
	ev := func(action, devpath, subsystem, devname, devtype string) *uevent.Event {
		return &uevent.Event{Action: action, DevPath: devpath, Subsystem: subsystem, DevName: devname, DevType: devtype}
	}
	const vda = "/devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio3/block/vda"
	for _, c := range []struct {
		ev   *uevent.Event
		want bool
	}{
		{ev("add", vda, "block", "vda", "disk"), true},
		{ev("add", "/devices/pci0000:00/0000:00:02.0/0000:07:00.0/virtio3/block/vda", "block", "vda", "disk"), true}, // any bus number behind the bridge
		{ev("remove", vda, "block", "vda", "disk"), false},
		{ev("add", vda+"/vda1", "block", "vda1", "partition"), false},
		{ev("add", "/devices/pci0000:00/0000:00:02.0/0000:01:01.0/virtio3/block/vda", "block", "vda", "disk"), false},
		{ev("add", "/devices/pci0000:00/0000:00:03.0/0000:01:00.0/virtio3/block/vda", "block", "vda", "disk"), false},
		{ev("add", "/devices/pci0000:01/0000:01:02.0/0000:01:00.0/virtio3/block/vda", "block", "vda", "disk"), false},
		{ev("add", "/devices/pci0000:00/0000:00:02.0/0000:01:00.0", "pci", "", ""), false},
		{ev("add", "/devices/pci0000:00/0000:00:02.0", "block", "vda", "disk"), false},
	} {
		if got := blk.Match(c.ev); got != c.want {
			t.Errorf("Block().Match(%s) = %v, want %v", c.ev, got, c.want)
		}
	}
	dev := mustParse(t, "02/00").Device()
	if !dev.Match(ev("add", "/devices/pci0000:00/0000:00:02.0/0000:01:00.0", "pci", "", "")) {
		t.Error("Device did not match its add event")
	}
	if dev.Match(ev("add", "/devices/pci0000:00/0000:00:02.0", "pci", "", "")) {
		t.Error("Device matched its bridge")
	}
}

func mustParse(t *testing.T, s string) Path {
	t.Helper()
	p, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
