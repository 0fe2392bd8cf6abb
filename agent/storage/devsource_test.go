package storage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/uevent"
	"github.com/keelvm/keel/tests/loopdev"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
)

var nodeSeq atomic.Int32

// enxioNode makes a block node under /dev (a "blk" source must be there)
// whose open answers ENXIO (see loopdev.ENXIONode).
func enxioNode(t *testing.T) string {
	t.Helper()
	node := fmt.Sprintf("/dev/keel-test-%d-%d", os.Getpid(), nodeSeq.Add(1))
	loopdev.ENXIONode(t, node)
	return node
}

// TestBlkDevSourceWaitsUntilReady: a "blk" storage whose source is a /dev
// node that cannot be opened yet waits until its disk is ready, then
// mounts it. Here the node answers ENXIO until the test turns it into a
// loop disk's node while the request waits. Before the fix the node was
// taken as it was and the mount failed at once ("no such device or
// address").
func TestBlkDevSourceWaitsUntilReady(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("makes device nodes and mounts: needs root")
	}
	root := t.TempDir()
	m := New(Config{Roots: []string{root}, ContainerBase: filepath.Join(root, "containers"),
		Devices: uevent.NewRegistry("", 20*time.Second)})
	t.Cleanup(func() {
		m.Close()
		assertNoMountsUnder(t, root)
	})
	img := loopdev.File(t, 32<<20)
	loopdev.Run(t, "mkfs.ext4", "-q", "-F", img)
	loop := loopdev.Attach(t, img)
	var disk unix.Stat_t
	must(t, unix.Stat(loop, &disk))

	node := enxioNode(t)
	mp := filepath.Join(root, "shared/containers/vol")
	done := make(chan error, 1)
	go func() {
		done <- m.Add(context.Background(), "c1", "storages", []Storage{{Driver: DriverBlk, Source: node, Fstype: "ext4", MountPoint: mp}})
	}()
	// Let it find the node not ready (it waits, registered), and a
	// rescan or two go by.
	deadline := time.Now().Add(10 * time.Second)
	for m.cfg.Devices.Waiting() == 0 {
		select {
		case err := <-done:
			t.Fatalf("a node answering ENXIO was not waited for: Add returned %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("Add neither waits nor returns")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(700 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("Add returned while the node still answered ENXIO: %v", err)
	default:
	}
	// The disk is ready now: the node gets the loop disk's numbers
	// (made aside and renamed over, so the path never goes missing).
	tmp := node + ".new"
	must(t, unix.Mknod(tmp, unix.S_IFBLK|0o600, int(disk.Rdev)))
	must(t, os.Rename(tmp, node))
	select {
	case err := <-done:
		must(t, err)
	case <-time.After(15 * time.Second):
		t.Fatal("Add still waits after the node became openable")
	}
	var st unix.Stat_t
	must(t, unix.Stat(mp, &st))
	if st.Dev != disk.Rdev {
		t.Fatalf("%s is on device %d:%d, want the loop disk %d:%d", mp, unix.Major(st.Dev), unix.Minor(st.Dev), unix.Major(disk.Rdev), unix.Minor(disk.Rdev))
	}
	must(t, m.Release("c1"))
}

// TestBlkDevSourceErrors: a /dev source that never becomes ready times out
// naming the field and saying why; a bad one is refused at once.
func TestBlkDevSourceErrors(t *testing.T) {
	m, root := newManager(t) // 500 ms hotplug timeout
	for _, c := range []struct {
		name, source string
		code         codes.Code
		msg          string
	}{
		{"node answering ENXIO", enxioNode(t), codes.DeadlineExceeded, "its disk is not ready"},
		{"no such node", "/dev/keel-nope", codes.DeadlineExceeded, `storages[0].source "/dev/keel-nope": block device /dev/keel-nope did not appear`},
		{"not a block device", "/dev/null", codes.InvalidArgument, `storages[0].source "/dev/null": not a block device`},
		{"out of /dev", "/dev/../etc/passwd", codes.InvalidArgument, "want a clean path under /dev"},
		{"bare /dev", "/dev/", codes.InvalidArgument, "want a clean path under /dev"},
		{"below a file", "/dev/null/x", codes.InvalidArgument, "not a directory"},
		{"outside /dev", "/etc/passwd", codes.InvalidArgument, "want a PCI path like 02/00 or a /dev path"},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			err := m.Add(context.Background(), "c1", "storages", []Storage{{Driver: DriverBlk, Source: c.source, Fstype: "ext4", MountPoint: filepath.Join(root, "x")}})
			if Code(err) != c.code || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err = %v (%s), want %s containing %q", err, Code(err), c.code, c.msg)
			}
			took := time.Since(start)
			if c.code == codes.DeadlineExceeded && took < 500*time.Millisecond {
				t.Errorf("gave up after %s, before the 500ms hotplug timeout", took)
			}
			// Bad input is refused with InvalidArgument, not the wait's
			// DeadlineExceeded: the code shows it was not waited for,
			// without a time bound that a loaded machine can break.
			if ms := mountsUnder(root); len(ms) > 0 {
				t.Fatalf("mounts left: %v", ms)
			}
		})
	}
}
