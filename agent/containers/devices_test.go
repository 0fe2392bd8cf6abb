package containers_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keelvm/keel/agent/container"
	"github.com/keelvm/keel/agent/containers"
	"github.com/keelvm/keel/agent/devices"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/loopdev"
)

func newDeviceRPC(t *testing.T) *containers.RPC {
	t.Helper()
	f := false
	sb, err := container.New(container.Config{StateRoot: t.TempDir(), CgroupParent: "/" + cgParent, NoPivotRoot: &f})
	if err != nil {
		t.Fatal(err)
	}
	r := containers.New(containers.Options{Sandbox: sb, ExecIOLinger: time.Second, Devices: &devices.Manager{}})
	t.Cleanup(func() {
		if _, err := r.DestroySandbox(context.Background(), &pb.DestroySandboxRequest{}); err != nil {
			t.Errorf("DestroySandbox: %v", err)
		}
	})
	return r
}

// TestRPCDeviceGetsGuestNumbers: the runtime names a disk by its guest
// /dev path and describes it in the spec with the host's numbers (253:99
// here, which no guest device has); the container's node gets the guest's
// real major:minor, the device cgroup lets it through, and the container
// reads the disk's bytes.
func TestRPCDeviceGetsGuestNumbers(t *testing.T) {
	file := loopdev.File(t, 1<<20)
	if err := os.WriteFile(file, append([]byte("keel-disk-marker"), make([]byte, 1<<20-16)...), 0o644); err != nil {
		t.Fatal(err)
	}
	dev := loopdev.Attach(t, file)
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		t.Fatal(err)
	}
	r := newDeviceRPC(t)
	ctx := context.Background()
	s := spec("/bin/sh", "-c", "stat -c '%t:%T %F' /dev/xvdb && head -c 16 /dev/xvdb")
	s.Linux.Devices = []*pb.LinuxDevice{{Path: "/dev/xvdb", Type: "b", Major: 253, Minor: 99, FileMode: 0o660}}
	s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, &pb.LinuxDeviceCgroup{Allow: true, Type: "b", Major: 253, Minor: 99, Access: "rw"})
	_, err := r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "disk", ExecId: "disk", OCI: s,
		Devices: []*pb.Device{{Type: "mmioblk", VmPath: dev, ContainerPath: "/dev/xvdb"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "disk"}); err != nil {
		t.Fatal(err)
	}
	out := readAll(t, r, "disk", "")
	want := fmt.Sprintf("%x:%x block special file\nkeel-disk-marker", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	if out != want {
		t.Errorf("container saw %q, want %q", out, want)
	}
	if code := wait(t, r, "disk", ""); code != 0 {
		t.Errorf("exit %d", code)
	}
}

// TestRPCDeviceBadInput: bad devices are refused naming the field, and no
// container is left behind.
func TestRPCDeviceBadInput(t *testing.T) {
	r := newDeviceRPC(t)
	ctx := context.Background()
	for _, c := range []struct {
		dev   *pb.Device
		code  codes.Code
		field string
	}{
		{&pb.Device{Type: "tape", VmPath: "/dev/null", ContainerPath: "/dev/xvdb"}, codes.InvalidArgument, "devices[0].type"},
		{&pb.Device{Type: "mmioblk", VmPath: "/dev/keel-missing", ContainerPath: "/dev/xvdb"}, codes.NotFound, "devices[0].vm_path"},
		{&pb.Device{Type: "mmioblk", VmPath: "/dev/loop-control", ContainerPath: "/dev/not-in-spec"}, codes.InvalidArgument, "devices[0].container_path"},
		{&pb.Device{Type: "mmioblk", VmPath: "/dev/loop-control", ContainerPath: "relative"}, codes.InvalidArgument, "devices[0].container_path"},
		{&pb.Device{Type: "vfio-ap", Id: "1", ContainerPath: "/dev/xvdb"}, codes.Unimplemented, "devices[0].type"},
		{nil, codes.InvalidArgument, "devices[0].type"},
	} {
		s := spec("/bin/true")
		s.Linux.Devices = []*pb.LinuxDevice{{Path: "/dev/xvdb", Type: "b", Major: 253, Minor: 99}}
		_, err := r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "bad", ExecId: "bad", OCI: s, Devices: []*pb.Device{c.dev}})
		if status.Code(err) != c.code || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%v: %v, want %v naming %s", c.dev, err, c.code, c.field)
		}
		if _, err := r.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: "bad"}); status.Code(err) != codes.NotFound {
			t.Errorf("%v: container left behind: %v", c.dev, err)
		}
	}
	// Without a device manager devices are Unimplemented, not ignored.
	_, err := newRPC(t).CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "x", OCI: spec("/bin/true"), Devices: []*pb.Device{{Type: "blk", Id: "02/00", ContainerPath: "/dev/xvdb"}}})
	if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "devices") {
		t.Errorf("no device manager: %v", err)
	}
}
