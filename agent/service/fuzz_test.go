package service

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/keelvm/keel/agent/container"
	"github.com/keelvm/keel/agent/containers"
	"github.com/keelvm/keel/agent/copyfile"
	"github.com/keelvm/keel/agent/guestops"
	"github.com/keelvm/keel/agent/ociconv"
	"github.com/keelvm/keel/init/kmod"
	pb "github.com/keelvm/keel/protocol/grpc"
)

// fuzzService assembles the real handlers the way cmd/keel-agent does, with
// every effect outside the test kept out: the container state root is a
// regular file, so a request that passes validation and conversion fails
// at libcontainer.Create (no process is ever started); kernel modules,
// the clock and the RNG are recorded, not touched; CopyFile writes under a
// temporary root; the hostname is not set.
func fuzzService(t testing.TB) *Service {
	dir := t.TempDir()
	sb, err := container.New(container.Config{
		StateRoot:    dir,
		CgroupParent: "/keel-fuzz",
		LoadModules:  func([]kmod.ModuleSpec) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "containers")
	if err := os.Remove(state); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(state, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	rpc := containers.New(containers.Options{Sandbox: sb})
	// CreateSandbox pins the pod's namespaces with bind mounts under dir.
	t.Cleanup(func() { rpc.DestroySandbox(context.Background(), &pb.DestroySandboxRequest{}) })
	return New(Handlers{
		Containers: rpc,
		GuestOps: &guestops.Handler{
			SetTime: func(*unix.Timeval) error { return nil },
			Seed:    func([]byte) error { return nil },
		},
		CopyFile: &copyfile.Handler{Copier: copyfile.Copier{Root: filepath.Join(dir, "shared")}},
		Guest:    &Guest{SysfsRoot: filepath.Join(dir, "sys")},
	})
}

// FuzzRequests decodes arbitrary bytes as the request of one AgentService
// RPC and runs it through Keel's handlers (validation, OCI conversion,
// CopyFile, the sandbox), plus the conversions a handler reaches only for
// an existing container (exec'd processes, resources). Whatever the host
// sends, the agent must not panic or hang, must answer with a gRPC status
// (never Unknown, never Internal for a request it could have refused), and a
// decoded request must survive a marshal/unmarshal round trip.
func FuzzRequests(f *testing.F) {
	svc := pb.File_agent_proto.Services().Get(0)
	methods := svc.Methods()
	seed := func(name string, m proto.Message) {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(methods.ByName(protoreflect.Name(name)).Index()), b)
	}
	spec := &pb.Spec{
		Version: "1.0.2", Hostname: "h", Root: &pb.Root{Path: "/", Readonly: true},
		Process: &pb.Process{Args: []string{"/bin/true"}, Cwd: "/", Env: []string{"PATH=/bin"}, User: &pb.User{},
			Rlimits: []*pb.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}}},
		Mounts: []*pb.Mount{{Destination: "/proc", Type: "proc", Source: "proc"}},
		Linux: &pb.Linux{
			Namespaces: []*pb.LinuxNamespace{{Type: "pid"}, {Type: "mount"}},
			Resources:  &pb.LinuxResources{Memory: &pb.LinuxMemory{Limit: 1 << 30}, Pids: &pb.LinuxPids{Limit: 10}},
		},
	}
	seed("CreateContainer", &pb.CreateContainerRequest{ContainerId: "c1", OCI: spec})
	seed("ExecProcess", &pb.ExecProcessRequest{ContainerId: "c1", ExecId: "e1", Process: spec.Process})
	seed("UpdateContainer", &pb.UpdateContainerRequest{ContainerId: "c1", Resources: spec.Linux.Resources})
	seed("CreateSandbox", &pb.CreateSandboxRequest{Hostname: "h", SandboxId: "s", Dns: []string{"nameserver 192.0.2.1"},
		KernelModules: []*pb.KernelModule{{Name: "loop", Parameters: []string{"max_loop=8"}}}})
	seed("CopyFile", &pb.CopyFileRequest{Path: "/run/kata-containers/shared/containers/c1/f", FileSize: 1, Data: []byte("x"), DirMode: 0x800001E8})
	seed("TtyWinResize", &pb.TtyWinResizeRequest{ContainerId: "c1", Row: 1 << 16})
	seed("SetGuestDateTime", &pb.SetGuestDateTimeRequest{Sec: 1, Usec: 2})
	seed("ReadStdout", &pb.ReadStreamRequest{ContainerId: "c1", Len: 1 << 30})
	f.Add(uint8(0), []byte{0x32, 0xff, 0xff, 0xff, 0xff, 0x0f})

	s := fuzzService(f)
	copyRoot := s.FileCopier.Copier.Root
	sv := reflect.ValueOf(s)
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		md := methods.Get(int(which) % methods.Len())
		req := newMsg(t, md.Input().FullName())
		if proto.Unmarshal(data, req) != nil {
			return
		}
		b, err := proto.Marshal(req)
		if err != nil {
			t.Fatalf("%s: re-marshal: %v", md.Name(), err)
		}
		if again := newMsg(t, md.Input().FullName()); proto.Unmarshal(b, again) != nil || !proto.Equal(req, again) {
			t.Fatalf("%s: round trip changed the request", md.Name())
		}
		// CopyFile paths are confined to the handler's root.
		if c, ok := req.(*pb.CopyFileRequest); ok {
			c.Path = copyRoot + "/" + c.Path
		}

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if md.Name() == "GetOOMEvent" {
			cancel() // it waits for an event that never comes
		}
		done := make(chan error, 1)
		go func() {
			out := sv.MethodByName(string(md.Name())).Call([]reflect.Value{reflect.ValueOf(ctx), reflect.ValueOf(req)})
			err, _ := out[1].Interface().(error)
			done <- err
		}()
		select {
		case err = <-done:
		case <-time.After(20 * time.Second):
			t.Fatalf("%s blocked for 20 s on %v", md.Name(), req)
		}
		checkStatus(t, string(md.Name()), req, err)

		// What the handlers only reach for an existing container.
		switch r := req.(type) {
		case *pb.ExecProcessRequest:
			if p, err := ociconv.ProcessFromPB(r.Process, "process"); err == nil {
				classified(t, "ValidateProcess", ociconv.ValidateProcess(p, "process"))
			} else {
				classified(t, "ProcessFromPB", err)
			}
		case *pb.UpdateContainerRequest:
			if res, err := ociconv.ResourcesFromPB(r.Resources, "resources"); err == nil {
				_, err = ociconv.Resources(nil, res)
				classified(t, "Resources", err)
			} else {
				classified(t, "ResourcesFromPB", err)
			}
		}
	})
}

// checkStatus: a handler's answer is nil or a gRPC status with a code a
// client can act on.
func checkStatus(t *testing.T, rpc string, req proto.Message, err error) {
	t.Helper()
	if err == nil {
		return
	}
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("%s: error is not a gRPC status: %v", rpc, err)
	}
	switch st.Code() {
	case codes.Unknown, codes.Internal:
		t.Fatalf("%s(%v): %v", rpc, req, err)
	}
}

// classified: a conversion error is ociconv.ErrInvalid (InvalidArgument at
// the edge), nothing else.
func classified(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil && !errors.Is(err, ociconv.ErrInvalid) {
		t.Fatalf("%s: error not classified as invalid: %v", what, err)
	}
}

func newMsg(t *testing.T, name protoreflect.FullName) proto.Message {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return mt.New().Interface()
}

// The fuzz harness is only worth its executions if a well-formed request
// gets through validation and OCI conversion to libcontainer.Create (where
// the harness stops it) and CopyFile really writes.
func TestFuzzHarnessReachesTheEnd(t *testing.T) {
	s := fuzzService(t)
	ctx := context.Background()
	spec := &pb.Spec{Root: &pb.Root{Path: "/"}, Process: &pb.Process{Args: []string{"/bin/true"}, Cwd: "/", User: &pb.User{}},
		Linux: &pb.Linux{Namespaces: []*pb.LinuxNamespace{{Type: "mount"}}}}
	_, err := s.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "c1", OCI: spec})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "OCI:") || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("CreateContainer stopped before libcontainer.Create: %v", err)
	}
	root := s.FileCopier.Copier.Root
	if _, err := s.CopyFile(ctx, &pb.CopyFileRequest{Path: root + "/c1/f", FileSize: 1, Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(root + "/c1/f"); err != nil || string(b) != "x" {
		t.Fatalf("CopyFile wrote %q, %v", b, err)
	}
}
