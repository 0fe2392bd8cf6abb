// Package protocol_test holds Keel to the Kata Containers agent wire format:
// each expected encoding is built by hand with protowire from the field
// numbers and types of Kata's agent.proto / types.proto, independently of
// the generated code, and compared byte for byte with what our generated
// messages marshal to; the expected bytes must also decode back.
package protocol_test

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/protocol/types"
)

// enc builds a message from (field, value) pairs in the order given.
type enc struct{ b []byte }

func (e *enc) str(n protowire.Number, s string) *enc {
	e.b = protowire.AppendTag(e.b, n, protowire.BytesType)
	e.b = protowire.AppendString(e.b, s)
	return e
}

func (e *enc) bytes(n protowire.Number, p []byte) *enc {
	e.b = protowire.AppendTag(e.b, n, protowire.BytesType)
	e.b = protowire.AppendBytes(e.b, p)
	return e
}

func (e *enc) msg(n protowire.Number, m *enc) *enc { return e.bytes(n, m.b) }

func (e *enc) varint(n protowire.Number, v uint64) *enc {
	e.b = protowire.AppendTag(e.b, n, protowire.VarintType)
	e.b = protowire.AppendVarint(e.b, v)
	return e
}

func check(t *testing.T, name string, got proto.Message, want *enc) {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(got)
	if err != nil {
		t.Fatalf("%s: marshal: %v", name, err)
	}
	if !bytes.Equal(b, want.b) {
		t.Errorf("%s: wire bytes differ from Kata's layout\n got  %x\n want %x", name, b, want.b)
	}
	back := got.ProtoReflect().New().Interface()
	if err := proto.Unmarshal(want.b, back); err != nil {
		t.Fatalf("%s: unmarshal of hand-built bytes: %v", name, err)
	}
	if !proto.Equal(back, got) {
		t.Errorf("%s: hand-built bytes decode to %v, want %v", name, back, got)
	}
}

func TestWireCreateContainerRequest(t *testing.T) {
	m := &pb.CreateContainerRequest{
		ContainerId: "c1",
		ExecId:      "e1",
		StringUser:  &pb.StringUser{Uid: "0", Gid: "0", AdditionalGids: []string{"10"}},
		Devices:     []*pb.Device{{Id: "d", Type: "blk"}},
		Storages:    []*pb.Storage{{Driver: "virtio-fs", MountPoint: "/m"}},
		OCI: &pb.Spec{
			Version:  "1.1.0",
			Process:  &pb.Process{Terminal: true, Args: []string{"sh"}},
			Root:     &pb.Root{Path: "/r", Readonly: true},
			Hostname: "h",
			Linux:    &pb.Linux{CgroupsPath: "/k", Namespaces: []*pb.LinuxNamespace{{Type: "pid"}}},
		},
		SandboxPidns: true,
		SharedMounts: []*pb.SharedMount{{Name: "s"}},
		StdinPort:    1,
		StdoutPort:   2,
		StderrPort:   3,
	}
	spec := (&enc{}).str(1, "1.1.0").
		msg(2, (&enc{}).varint(1, 1).str(4, "sh")).
		msg(3, (&enc{}).str(1, "/r").varint(2, 1)).
		str(4, "h").
		msg(8, (&enc{}).str(5, "/k").msg(6, (&enc{}).str(1, "pid")))
	want := (&enc{}).str(1, "c1").str(2, "e1").
		msg(3, (&enc{}).str(1, "0").str(2, "0").str(3, "10")).
		msg(4, (&enc{}).str(1, "d").str(2, "blk")).
		msg(5, (&enc{}).str(1, "virtio-fs").str(6, "/m")).
		msg(6, spec).
		varint(7, 1).
		msg(8, (&enc{}).str(1, "s")).
		varint(9, 1).varint(10, 2).varint(11, 3)
	check(t, "CreateContainerRequest", m, want)
}

func TestWireExecProcessRequest(t *testing.T) {
	m := &pb.ExecProcessRequest{
		ContainerId: "c", ExecId: "e",
		StringUser: &pb.StringUser{Uid: "1"},
		Process:    &pb.Process{Args: []string{"ls", "-l"}, Env: []string{"A=b"}, Cwd: "/", User: &pb.User{UID: 5, GID: 6}},
		StdinPort:  7, StdoutPort: 8, StderrPort: 9,
	}
	proc := (&enc{}).msg(3, (&enc{}).varint(1, 5).varint(2, 6)).str(4, "ls").str(4, "-l").str(5, "A=b").str(6, "/")
	want := (&enc{}).str(1, "c").str(2, "e").msg(3, (&enc{}).str(1, "1")).msg(4, proc).varint(5, 7).varint(6, 8).varint(7, 9)
	check(t, "ExecProcessRequest", m, want)
}

func TestWireStorage(t *testing.T) {
	m := &pb.Storage{
		Driver: "blk", DriverOptions: []string{"o"}, Source: "/dev/vda", Fstype: "ext4",
		Options: []string{"ro"}, MountPoint: "/mnt", Shared: true,
		FsGroup: &pb.FSGroup{GroupId: 100, GroupChangePolicy: types.FSGroupChangePolicy_OnRootMismatch},
	}
	want := (&enc{}).str(1, "blk").str(2, "o").str(3, "/dev/vda").str(4, "ext4").str(5, "ro").str(6, "/mnt").
		msg(7, (&enc{}).varint(2, 100).varint(3, 1)).varint(8, 1)
	check(t, "Storage", m, want)
}

func TestWireDevice(t *testing.T) {
	m := &pb.Device{Id: "0000:00:02.0", Type: "vfio-pci", VmPath: "/dev/vfio/1", ContainerPath: "/dev/x", Options: []string{"a=b"}}
	want := (&enc{}).str(1, "0000:00:02.0").str(2, "vfio-pci").str(3, "/dev/vfio/1").str(4, "/dev/x").str(5, "a=b")
	check(t, "Device", m, want)
}

func TestWireInterface(t *testing.T) {
	m := &types.Interface{
		Device: "eth0", Name: "eth1",
		IPAddresses: []*types.IPAddress{{Family: types.IPFamily_v6, Address: "fd00::1", Mask: "64"}},
		Mtu:         1500, HwAddr: "02:00:00:00:00:01", DevicePath: "02/00", Type: "veth", RawFlags: 128,
	}
	want := (&enc{}).str(1, "eth0").str(2, "eth1").
		msg(3, (&enc{}).varint(1, 1).str(2, "fd00::1").str(3, "64")).
		varint(4, 1500).str(5, "02:00:00:00:00:01").str(6, "02/00").str(7, "veth").varint(8, 128)
	check(t, "Interface", m, want)
}

func TestWireRoute(t *testing.T) {
	m := &types.Route{Dest: "10.0.0.0/8", Gateway: "10.0.0.1", Device: "eth0", Source: "10.0.0.2", Scope: 253, Family: types.IPFamily_v6, Flags: 4, Mtu: 9000}
	want := (&enc{}).str(1, "10.0.0.0/8").str(2, "10.0.0.1").str(3, "eth0").str(4, "10.0.0.2").varint(5, 253).varint(6, 1).varint(7, 4).varint(8, 9000)
	check(t, "Route", m, want)
}

func TestWireWaitProcessResponse(t *testing.T) {
	check(t, "WaitProcessResponse", &pb.WaitProcessResponse{Status: 137}, (&enc{}).varint(1, 137))
	// int32 negative values are 10-byte sign-extended varints on the wire.
	neg := int64(-1)
	check(t, "WaitProcessResponse(-1)", &pb.WaitProcessResponse{Status: -1}, (&enc{}).varint(1, uint64(neg)))
}

func TestWireReadStreamResponse(t *testing.T) {
	check(t, "ReadStreamResponse", &pb.ReadStreamResponse{Data: []byte{0, 1, 0xff}}, (&enc{}).bytes(1, []byte{0, 1, 0xff}))
	// Empty data is Kata's end-of-stream: it must encode to nothing at all.
	check(t, "ReadStreamResponse(EOF)", &pb.ReadStreamResponse{}, &enc{})
}

// The service names carry the proto package: ttrpc routes on them.
func TestServiceNames(t *testing.T) {
	for _, s := range []struct{ got, want string }{
		{string(pb.File_agent_proto.Services().Get(0).FullName()), "grpc.AgentService"},
		{string(pb.File_health_proto.Services().Get(0).FullName()), "grpc.Health"},
	} {
		if s.got != s.want {
			t.Errorf("service %q, want %q", s.got, s.want)
		}
	}
	if n := pb.File_agent_proto.Services().Get(0).Methods().Len(); n != 42 {
		t.Errorf("AgentService has %d RPCs, Kata's has 42", n)
	}
}
