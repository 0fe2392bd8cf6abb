package devices

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/keelvm/keel/tests/loopdev"
)

func i64(v int64) *int64 { return &v }

// TestRewriteSwappedNumbers: two devices whose host and guest numbers are
// each other's get both their entries and their cgroup rules rewritten
// exactly once, and an allow rule each; the input spec is not modified.
func TestRewriteSwappedNumbers(t *testing.T) {
	spec := &specs.Spec{Linux: &specs.Linux{
		Devices: []specs.LinuxDevice{
			{Path: "/dev/a", Type: "b", Major: 8, Minor: 0},
			{Path: "/dev/b", Type: "b", Major: 253, Minor: 0},
			{Path: "/dev/other", Type: "c", Major: 1, Minor: 3},
		},
		Resources: &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{
			{Allow: false, Access: "rwm"},
			{Allow: true, Type: "b", Major: i64(8), Minor: i64(0), Access: "rw"},
			{Allow: true, Type: "b", Major: i64(253), Minor: i64(0), Access: "r"},
			{Allow: true, Type: "c", Major: i64(8), Minor: i64(0), Access: "r"}, // a char device: not ours
		}},
	}}
	orig := deepCopy(t, spec)
	out, err := rewrite(spec, []guestDevice{
		{index: 0, containerPath: "/dev/a", typ: "b", major: 253, minor: 0},
		{index: 1, containerPath: "/dev/b", typ: "b", major: 8, minor: 0},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(spec, orig) {
		t.Errorf("input spec modified")
	}
	d := out.Linux.Devices
	if d[0].Major != 253 || d[0].Minor != 0 || d[1].Major != 8 || d[1].Minor != 0 || d[2].Major != 1 {
		t.Errorf("devices %+v", d)
	}
	r := out.Linux.Resources.Devices
	if len(r) != 6 {
		t.Fatalf("rules %+v", r)
	}
	if *r[1].Major != 253 || r[1].Access != "rw" || *r[2].Major != 8 || r[2].Access != "r" || *r[3].Major != 8 || r[3].Type != "c" {
		t.Errorf("rewritten rules %+v %+v %+v", r[1], r[2], r[3])
	}
	if !r[4].Allow || r[4].Type != "b" || *r[4].Major != 253 || r[4].Access != "rwm" || *r[5].Major != 8 {
		t.Errorf("allow rules %+v %+v", r[4], r[5])
	}
}

func deepCopy(t *testing.T, s *specs.Spec) *specs.Spec {
	c := *s
	l := *s.Linux
	l.Devices = append([]specs.LinuxDevice(nil), s.Linux.Devices...)
	res := *s.Linux.Resources
	res.Devices = append([]specs.LinuxDeviceCgroup(nil), res.Devices...)
	l.Resources = &res
	c.Linux = &l
	return &c
}

func TestRewriteErrors(t *testing.T) {
	spec := &specs.Spec{Linux: &specs.Linux{Devices: []specs.LinuxDevice{{Path: "/dev/a", Type: "c", Major: 8, Minor: 0}}}}
	_, err := rewrite(spec, []guestDevice{{index: 3, containerPath: "/dev/missing", typ: "b"}})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "devices[3].container_path") {
		t.Errorf("missing entry: %v", err)
	}
	_, err = rewrite(spec, []guestDevice{{index: 0, containerPath: "/dev/a", typ: "b"}})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "type") {
		t.Errorf("type mismatch: %v", err)
	}
}

func TestTranslatePCIEnv(t *testing.T) {
	env := []string{
		"PATH=/bin",
		"PCIDEVICE_INTEL_COM_SRIOV=0000:3b:02.0,0000:3b:02.1",
		`PCIDEVICE_INTEL_COM_SRIOV_INFO={"0000:3b:02.0":{},"0000:3b:02.1":{}}`,
		"PCIDEVICE_OTHER=0000:99:00.0",
		"PCIDEVICE_OTHER_INFO=0000:99:00.0",
	}
	got := translatePCIEnv(env, map[string]string{"0000:3b:02.0": "0000:01:00.0", "0000:3b:02.1": "0000:02:00.0"})
	want := []string{
		"PATH=/bin",
		"PCIDEVICE_INTEL_COM_SRIOV=0000:01:00.0,0000:02:00.0",
		`PCIDEVICE_INTEL_COM_SRIOV_INFO={"0000:01:00.0":{},"0000:02:00.0":{}}`,
		"PCIDEVICE_OTHER=0000:99:00.0",
		"PCIDEVICE_OTHER_INFO=0000:99:00.0",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	if env[1] != "PCIDEVICE_INTEL_COM_SRIOV=0000:3b:02.0,0000:3b:02.1" {
		t.Error("input env modified")
	}
}

// TestApplyBadInput: every malformed device is refused naming its field,
// and the spec is left as it was.
func TestApplyBadInput(t *testing.T) {
	base := func() *specs.Spec {
		return &specs.Spec{Linux: &specs.Linux{Devices: []specs.LinuxDevice{{Path: "/dev/xda", Type: "b", Major: 253, Minor: 1}}}}
	}
	m := &Manager{}
	for _, c := range []struct {
		dev   Device
		field string
		err   error
	}{
		{Device{VMPath: "/dev/null", ContainerPath: "/dev/xda"}, "devices[0].type", ErrInvalid},
		{Device{Type: "floppy", VMPath: "/dev/null", ContainerPath: "/dev/xda"}, "devices[0].type", ErrInvalid},
		{Device{Type: "vfio-ap", ID: "x", ContainerPath: "/dev/xda"}, "devices[0].type", ErrUnsupported},
		{Device{Type: "mmioblk", VMPath: "/dev/null"}, "devices[0].container_path", ErrInvalid},
		{Device{Type: "mmioblk", VMPath: "/dev/null", ContainerPath: "dev/xda"}, "devices[0].container_path", ErrInvalid},
		{Device{Type: "mmioblk", VMPath: "/dev/null", ContainerPath: "/dev/../etc/xda"}, "devices[0].container_path", ErrInvalid},
		{Device{Type: "mmioblk", ContainerPath: "/dev/xda"}, "devices[0].id", ErrInvalid},
		{Device{Type: "mmioblk", ID: "x", ContainerPath: "/dev/xda"}, "devices[0].vm_path", ErrInvalid},
		{Device{Type: "mmioblk", VMPath: "/etc/passwd", ContainerPath: "/dev/xda"}, "devices[0].vm_path", ErrInvalid},
		{Device{Type: "mmioblk", VMPath: "/dev/../etc/passwd", ContainerPath: "/dev/xda"}, "devices[0].vm_path", ErrInvalid},
		{Device{Type: "mmioblk", VMPath: "/dev/keel-no-such-disk", ContainerPath: "/dev/xda"}, "devices[0].vm_path", ErrNotFound},
		{Device{Type: "nvdimm", VMPath: "/dev/null", ContainerPath: "/dev/xda"}, "linux.devices", ErrInvalid}, // char device vs b
		{Device{Type: "mmioblk", VMPath: "/dev/shm", ContainerPath: "/dev/xda"}, "not a device node", ErrInvalid},
		{Device{Type: "blk", ID: "02/zz", ContainerPath: "/dev/xda"}, "devices[0].id", ErrInvalid},
		{Device{Type: "blk", ID: "02/00", ContainerPath: "/dev/xda"}, "devices[0].id", ErrUnsupported}, // no Locator
		{Device{Type: "scsi", ID: "0", ContainerPath: "/dev/xda"}, "devices[0].id", ErrInvalid},
		{Device{Type: "scsi", ID: "0:1", ContainerPath: "/dev/xda"}, "devices[0].id", ErrUnsupported},
		{Device{Type: "vfio-pci", ID: "3", ContainerPath: "/dev/vfio/3"}, "devices[0].options", ErrInvalid},
		{Device{Type: "vfio-pci", ID: "3", ContainerPath: "/dev/vfio/3", Options: []string{"3b:00.0=02/00"}}, "devices[0].options[0]", ErrInvalid},
		{Device{Type: "vfio-pci", ID: "3", ContainerPath: "/dev/vfio/3", Options: []string{"0000:3b:00.0=02/00=x"}}, "devices[0].options[0]", ErrInvalid},
		{Device{Type: "vfio-pci-gk", ID: "3", ContainerPath: "/dev/vfio/3", Options: []string{"0000:3b:00.0=02/00"}}, "devices[0].options[0]", ErrUnsupported},
	} {
		spec := base()
		err := m.Apply(context.Background(), []Device{c.dev}, spec)
		if !errors.Is(err, c.err) || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%+v: %v, want %v naming %s", c.dev, err, c.err, c.field)
		}
		if !reflect.DeepEqual(spec, base()) {
			t.Errorf("%+v: spec modified on error", c.dev)
		}
	}
	dup := []Device{{Type: "mmioblk", VMPath: "/dev/null", ContainerPath: "/dev/xda"}, {Type: "mmioblk", VMPath: "/dev/zero", ContainerPath: "/dev/xda"}}
	if err := m.Apply(context.Background(), dup, base()); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "devices[1].container_path") {
		t.Errorf("duplicate container_path: %v", err)
	}
	if err := m.Apply(context.Background(), make([]Device, MaxDevices+1), base()); !errors.Is(err, ErrInvalid) {
		t.Errorf("too many devices: %v", err)
	}
	if err := m.Apply(context.Background(), dup[:1], &specs.Spec{}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "linux") {
		t.Errorf("no linux section: %v", err)
	}
}

// TestApplyLoopDevice: a real block device named by its /dev path
// (mmioblk, nvdimm, blk without a PCI path) gets the node's real numbers.
func TestApplyLoopDevice(t *testing.T) {
	dev := loopdev.Attach(t, loopdev.File(t, 1<<20))
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		t.Fatal(err)
	}
	maj, min := int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	for _, typ := range []string{TypeMmioBlk, TypeNvdimm, TypeBlk} {
		spec := &specs.Spec{Process: &specs.Process{}, Linux: &specs.Linux{
			Devices:   []specs.LinuxDevice{{Path: "/dev/xdb", Type: "b", Major: 253, Minor: 99}},
			Resources: &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Allow: true, Type: "b", Major: i64(253), Minor: i64(99), Access: "rw"}}},
		}}
		if err := (&Manager{}).Apply(context.Background(), []Device{{Type: typ, VMPath: dev, ContainerPath: "/dev/xdb"}}, spec); err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		d := spec.Linux.Devices[0]
		r := spec.Linux.Resources.Devices
		if d.Path != "/dev/xdb" || d.Major != maj || d.Minor != min || *r[0].Major != maj || *r[0].Minor != min || r[0].Access != "rw" {
			t.Errorf("%s: device %+v rule %+v, want %d:%d", typ, d, r[0], maj, min)
		}
		if len(r) != 2 || !r[1].Allow || *r[1].Major != maj || *r[1].Minor != min || r[1].Access != "rwm" {
			t.Errorf("%s: rules %+v", typ, r)
		}
	}
}

// TestBindVFIOAlreadyBound: a function whose driver is already vfio-pci
// gets only its override written; one without an IOMMU group is refused.
func TestBindVFIOAlreadyBound(t *testing.T) {
	root := t.TempDir()
	m := &Manager{SysfsRoot: root}
	bdf := "0000:01:00.0"
	dev := filepath.Join(root, "bus/pci/devices", bdf)
	for _, d := range []string{dev, filepath.Join(root, "bus/pci/drivers/vfio-pci"), filepath.Join(root, "kernel/iommu_groups/7")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dev, "driver_override"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../../bus/pci/drivers/vfio-pci", filepath.Join(dev, "driver")); err != nil {
		t.Fatal(err)
	}
	if err := m.bindVFIO(context.Background(), bdf); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dev, "driver_override")); string(b) != "vfio-pci" {
		t.Errorf("driver_override %q", b)
	}
	if _, err := m.iommuGroup(bdf); !errors.Is(err, ErrUnsupported) {
		t.Errorf("no group: %v", err)
	}
	if err := os.Symlink("../../../kernel/iommu_groups/7", filepath.Join(dev, "iommu_group")); err != nil {
		t.Fatal(err)
	}
	if g, err := m.iommuGroup(bdf); err != nil || g != "7" {
		t.Errorf("group %q %v", g, err)
	}
	if err := (&Manager{SysfsRoot: t.TempDir()}).bindVFIO(context.Background(), bdf); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "vfio-pci driver") {
		t.Errorf("no vfio-pci driver: %v", err)
	}
}

// TestBindVFIOWaitsForLateAttach: a hot-plugged function is announced
// before the PCI core lets drivers match it, so the first probe binds
// nothing; bindVFIO keeps looking until the core's own attach binds
// vfio-pci (here: the driver link appears 150 ms later), and gives up
// with ctx.
func TestBindVFIOWaitsForLateAttach(t *testing.T) {
	root := t.TempDir()
	m := &Manager{SysfsRoot: root}
	bdf := "0000:01:00.0"
	dev := filepath.Join(root, "bus/pci/devices", bdf)
	for _, d := range []string{dev, filepath.Join(root, "bus/pci/drivers/vfio-pci")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{filepath.Join(dev, "driver_override"), filepath.Join(root, "bus/pci/drivers_probe")} {
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := m.bindVFIO(ctx, bdf); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("nothing bound: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "bus/pci/drivers_probe")); string(b) != bdf {
		t.Errorf("drivers_probe got %q", b)
	}
	go func() {
		time.Sleep(150 * time.Millisecond)
		os.Symlink("../../../bus/pci/drivers/vfio-pci", filepath.Join(dev, "driver"))
	}()
	start := time.Now()
	if err := m.bindVFIO(context.Background(), bdf); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("bound after %v, before the driver link appeared", d)
	}
}
