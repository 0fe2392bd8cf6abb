package network_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/network"
	"github.com/keelvm/keel/agent/network/nettest"
	"github.com/keelvm/keel/agent/uevent"
)

// The uevent registry resolves devicePath to the NIC's interface name
// (here from a sysfs tree laid out as a q35 guest's: a virtio-net behind
// the pcie-root-port in slot 2); the link, whose MAC is not the requested
// one, is found by that name and gets the MAC. A malformed devicePath is
// ErrInvalid, before anything is touched.
func TestUpdateInterfaceByPCIPath(t *testing.T) {
	sysfs := t.TempDir()
	mk := func(dir string) {
		if err := os.MkdirAll(filepath.Join(sysfs, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mk("class/net")
	mk("devices/pci0000:00/0000:00:02.0/pci_bus/0000:01")
	nic := "devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio1/net/ens5"
	mk(nic)
	if err := os.WriteFile(filepath.Join(sysfs, nic, "uevent"), []byte("INTERFACE=ens5\nIFINDEX=2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(sysfs, "class/net"), filepath.Join(sysfs, nic, "subsystem")); err != nil {
		t.Fatal(err)
	}
	ns, peer := nettest.New(t), nettest.New(t)
	vethIn(t, ns, peer, "ens5", "02:00:00:00:40:01", "p")
	n := newNet(t, ns, network.Config{Devices: network.UeventDevices{Registry: uevent.NewRegistry(sysfs, time.Second)}})
	got, err := n.UpdateInterface(context.Background(), network.Interface{Name: "eth0", HwAddr: mac("02:00:00:00:40:99"), MTU: 1500, DevicePath: "02/00", Addrs: prefixes("10.40.0.2/24")})
	if err != nil {
		t.Fatal(err)
	}
	if l := ns.Links()["eth0"]; got.Name != "eth0" || l.Address != "02:00:00:00:40:99" {
		t.Errorf("returned %+v, ip shows %+v", got, l)
	}
	_, err = n.UpdateInterface(context.Background(), network.Interface{Name: "eth0", HwAddr: mac("02:00:00:00:40:99"), MTU: 1500, DevicePath: "zz/00"})
	if !errors.Is(err, network.ErrInvalid) {
		t.Errorf("bad devicePath: %v", err)
	}
}
