package containers_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/container"
	"github.com/keelvm/keel/agent/containers"
	"github.com/keelvm/keel/agent/storage"
	pb "github.com/keelvm/keel/protocol/grpc"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestStoragesOverRPC: the Kata sandbox shape in host mode — an ephemeral
// shm storage in CreateSandbox, two containers sharing an overlay-free
// tmpfs volume storage through CreateContainer, each bind-mounting it;
// what one writes the host reads; the volume goes with the last container;
// a bad storage fails CreateContainer with the field named and leaves
// neither a container nor a mount.
func TestStoragesOverRPC(t *testing.T) {
	root := t.TempDir()
	f := false
	sb, err := container.New(container.Config{StateRoot: t.TempDir(), CgroupParent: "/" + cgParent, NoPivotRoot: &f})
	if err != nil {
		t.Fatal(err)
	}
	st := storage.New(storage.Config{Roots: []string{root}})
	r := containers.New(containers.Options{Sandbox: sb, Storages: st, ExecIOLinger: time.Second})
	ctx := context.Background()
	shm := filepath.Join(root, "sandbox/shm")
	// A CreateSandbox whose storage fails leaves no sandbox behind: the
	// next one is not AlreadyExists.
	if _, err := r.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: "sb", Storages: []*pb.Storage{{
		Driver: "ephemeral", Source: "shm", Fstype: "tmpfs", MountPoint: "/etc/shm"}}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("CreateSandbox with a storage outside the roots: %v, want InvalidArgument", err)
	}
	if _, err := r.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: "sb", Storages: []*pb.Storage{{
		Driver: "ephemeral", Source: "shm", Fstype: "tmpfs", MountPoint: shm, Options: []string{"nosuid", "nodev", "mode=1777", "size=1048576"}}}}); err != nil {
		t.Fatal(err)
	}
	// A second CreateSandbox fails before it reaches the storages: the
	// running sandbox's shm stays mounted.
	if _, err := r.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: "sb2", Storages: []*pb.Storage{{
		Driver: "ephemeral", Source: "shm", Fstype: "tmpfs", MountPoint: filepath.Join(root, "sandbox/shm2"), Options: []string{"size=1048576"}}}}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("second CreateSandbox: %v, want AlreadyExists", err)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(shm, &sfs); err != nil || sfs.Type != unix.TMPFS_MAGIC {
		t.Fatalf("the sandbox shm is no longer mounted after a refused CreateSandbox: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "sandbox/shm2")); !os.IsNotExist(err) {
		t.Fatalf("a refused CreateSandbox created its mount point: %v", err)
	}
	destroyed := false
	defer func() {
		if !destroyed {
			r.DestroySandbox(ctx, &pb.DestroySandboxRequest{})
		}
	}()
	vol := filepath.Join(root, "shared/containers/vol")
	volStorage := &pb.Storage{Driver: "ephemeral", Source: "tmpfs", Fstype: "tmpfs", MountPoint: vol, Options: []string{"size=1048576"}, Shared: false}
	withMounts := func(args ...string) *pb.Spec {
		s := spec(args...)
		s.Mounts = append(s.Mounts,
			&pb.Mount{Destination: "/vol", Type: "bind", Source: vol, Options: []string{"rbind", "rw"}},
			&pb.Mount{Destination: "/dev/shm", Type: "bind", Source: shm, Options: []string{"rbind", "rw"}})
		return s
	}
	for _, id := range []string{"c1", "c2"} {
		if _, err := r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: id, ExecId: id, OCI: withMounts("/bin/sh", "-c", "echo from-"+id+" > /vol/"+id+"; echo shm > /dev/shm/"+id),
			Storages: []*pb.Storage{volStorage}}); err != nil {
			t.Fatalf("CreateContainer %s: %v", id, err)
		}
		if _, err := r.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: id}); err != nil {
			t.Fatal(err)
		}
		if code := wait(t, r, id, id); code != 0 {
			t.Fatalf("%s exited %d", id, code)
		}
	}
	for _, id := range []string{"c1", "c2"} {
		if b, err := os.ReadFile(filepath.Join(vol, id)); err != nil || strings.TrimSpace(string(b)) != "from-"+id {
			t.Fatalf("volume file of %s: %q %v", id, b, err)
		}
		if b, err := os.ReadFile(filepath.Join(shm, id)); err != nil || strings.TrimSpace(string(b)) != "shm" {
			t.Fatalf("shm file of %s: %q %v", id, b, err)
		}
	}
	// Ephemeral volumes are emptyDirs: they live as long as the sandbox.
	if _, err := r.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatal(err)
	}
	if st.Refs(vol) != 1 {
		t.Fatalf("refs after one removal: %d", st.Refs(vol))
	}
	// A bad storage: InvalidArgument naming the field, no container, nothing mounted.
	_, err = r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "bad", ExecId: "bad", OCI: spec("/bin/true"),
		Storages: []*pb.Storage{{Driver: "ephemeral", Fstype: "tmpfs", MountPoint: filepath.Join(root, "bad")}, {Driver: "local", MountPoint: "/etc/evil"}}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "storages[1].mount_point") {
		t.Fatalf("bad storage: %v", err)
	}
	if _, err := sb.Container("bad"); err == nil {
		t.Fatal("container created despite the bad storage")
	}
	if _, err := os.Stat(filepath.Join(root, "bad")); !os.IsNotExist(err) {
		t.Fatalf("first storage of the failed request left: %v", err)
	}
	if _, err := r.DestroySandbox(ctx, &pb.DestroySandboxRequest{}); err != nil {
		t.Fatal(err)
	}
	destroyed = true
	data, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(data), root) {
		t.Fatalf("mounts under %s left after DestroySandbox", root)
	}
}

// TestRPCTimedOutCreateKeepsStorages: a CreateContainer whose start
// outlives the launch timeout and its grace (a createRuntime hook frozen in
// a cgroup v1 freezer: its SIGKILL waits for the thaw, so libcontainer's
// start cannot return) answers DeadlineExceeded while the rollback goes on
// in the background. The container's storage stays set up until that
// rollback ended, also through a refused retry of the same id, and goes
// with it; the id is free again.
func TestRPCTimedOutCreateKeepsStorages(t *testing.T) {
	const freezer = "/sys/fs/cgroup/freezer"
	if _, err := os.Stat(filepath.Join(freezer, "cgroup.procs")); err != nil {
		// cgroup v2's freezer lets SIGKILL through: no way to hold a
		// hook past the kill without it.
		t.Skipf("needs the cgroup v1 freezer (%v)", err)
	}
	fz := filepath.Join(freezer, fmt.Sprintf("keel-rpc-test-%d", os.Getpid()))
	if err := os.Mkdir(fz, 0o755); err != nil {
		t.Fatal(err)
	}
	thaw := func() {
		if err := os.WriteFile(filepath.Join(fz, "freezer.state"), []byte("THAWED"), 0o644); err != nil {
			t.Errorf("thaw: %v", err)
		}
	}
	t.Cleanup(func() {
		thaw()
		deadline := time.Now().Add(10 * time.Second)
		for os.Remove(fz) != nil && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
	})
	root := t.TempDir()
	f := false
	sb, err := container.New(container.Config{StateRoot: t.TempDir(), CgroupParent: "/" + cgParent, NoPivotRoot: &f, LaunchTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	st := storage.New(storage.Config{Roots: []string{root}})
	r := containers.New(containers.Options{Sandbox: sb, Storages: st})
	t.Cleanup(func() { _, _ = r.DestroySandbox(context.Background(), &pb.DestroySandboxRequest{}) })
	ctx := context.Background()
	src := filepath.Join(root, "shared/src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "key"), []byte("v1"), 0o644); err != nil {
		t.Fatal(err)
	}
	mp := filepath.Join(root, "shared/watchable/cm")
	storages := []*pb.Storage{{Driver: storage.DriverWatchableBind, Source: src, MountPoint: mp}}
	s := spec("/bin/true")
	s.Hooks = &pb.Hooks{CreateRuntime: []*pb.Hook{{Path: "/bin/sh", Args: []string{"sh", "-c",
		"echo $$ > " + fz + "/cgroup.procs && echo FROZEN > " + fz + "/freezer.state; exec sleep 1000"}}}}
	start := time.Now()
	_, err = r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "frozen", OCI: s, Storages: storages})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("frozen create: %v after %v, want DeadlineExceeded", err, time.Since(start))
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("answered after %v: the RPC waited for the rollback", d)
	}
	stillThere := func(when string) {
		t.Helper()
		if b, err := os.ReadFile(filepath.Join(mp, "key")); err != nil || string(b) != "v1" {
			t.Fatalf("%s: the storage is gone while the rollback still runs (%q, %v)", when, b, err)
		}
	}
	stillThere("after the RPC answered")
	// A retry of the id while the rollback runs is refused, and takes
	// none of the first create's references with it.
	_, err = r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "frozen", OCI: spec("/bin/true"), Storages: storages})
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("retry during the rollback: %v, want AlreadyExists", err)
	}
	time.Sleep(500 * time.Millisecond)
	stillThere("after a refused retry")
	if n := st.Refs(mp); n != 1 {
		t.Fatalf("storage refs during the rollback: %d, want the first create's 1", n)
	}
	thaw()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := os.Stat(filepath.Join(mp, "key"))
		if os.IsNotExist(err) && st.Refs(mp) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("storage not torn down after the rollback (refs %d, %v)", st.Refs(mp), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "frozen", OCI: spec("/bin/true")}); err != nil {
		t.Fatalf("create of the same id after the rollback: %v", err)
	}
}

// TestRPCCreatePanicDropsStorages: a CreateContainer that panics after
// acquiring its storages (the server recovers panics) drops them: the
// storage's reference count is back to 0. (Before, they were dropped only
// when an error was returned, which a panic does not.)
func TestRPCCreatePanicDropsStorages(t *testing.T) {
	root := t.TempDir()
	f := false
	sb, err := container.New(container.Config{StateRoot: t.TempDir(), CgroupParent: "/" + cgParent, NoPivotRoot: &f})
	if err != nil {
		t.Fatal(err)
	}
	st := storage.New(storage.Config{Roots: []string{root}})
	r := containers.New(containers.Options{Sandbox: sb, Storages: st, ExecIOLinger: time.Second})
	ctx := context.Background()
	t.Cleanup(func() { r.DestroySandbox(ctx, &pb.DestroySandboxRequest{}) })
	containers.SetCreateFault(func() { panic("injected") })
	t.Cleanup(func() { containers.SetCreateFault(nil) })
	vol := filepath.Join(root, "shared/containers/vol")
	func() {
		defer func() {
			if recover() == nil {
				t.Error("the injected panic did not happen")
			}
		}()
		r.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "p", ExecId: "p", OCI: spec("/bin/true"),
			Storages: []*pb.Storage{{Driver: "ephemeral", Source: "tmpfs", Fstype: "tmpfs", MountPoint: vol, Options: []string{"size=1048576"}}}})
	}()
	if n := st.Refs(vol); n != 0 {
		t.Fatalf("refs on %s = %d after a panicking CreateContainer, want 0", vol, n)
	}
}
