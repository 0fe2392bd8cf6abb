package uevent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keelvm/keel/tests/loopdev"
	"golang.org/x/sys/unix"
)

// fakeDevice creates a sysfs-like device directory under root.
func fakeDevice(t *testing.T, root, devpath, subsystem, uevent string) {
	t.Helper()
	dir := filepath.Join(root, devpath)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "uevent"), []byte(uevent), 0o644); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(root, "class", subsystem)
	os.MkdirAll(sub, 0o755)
	if err := os.Symlink(sub, filepath.Join(dir, "subsystem")); err != nil {
		t.Fatal(err)
	}
}

const vdaPath = "/devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio3/block/vda"

func vdaMatcher() Matcher {
	return Matcher{
		What: "vda",
		Match: func(ev *Event) bool {
			return ev.Action == ActionAdd && ev.Subsystem == "block" && ev.DevPath == vdaPath
		},
		Present: func(sysfs string) []string { return Glob(sysfs, "/devices/pci0000:00/0000:00:02.0/*/virtio*/block/*") },
	}
}

func TestWaitFindsPresentDevice(t *testing.T) {
	root := t.TempDir()
	fakeDevice(t, root, vdaPath, "block", "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n")
	r := NewRegistry(root, time.Second)
	start := time.Now()
	ev, err := r.Wait(context.Background(), vdaMatcher(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if ev.DevName != "vda" || ev.Subsystem != "block" || ev.Major != "254" || ev.DevPath != vdaPath {
		t.Fatalf("got %+v", ev)
	}
	// Found at once, by the look before the first rescan: a Wait that
	// found it only at a rescan would take rescanInterval. That, not a
	// tighter figure (200 ms was a CI flake risk), is the bound.
	if d := time.Since(start); d >= rescanInterval {
		t.Fatalf("present device took %s, want less than a rescan (%v)", d, rescanInterval)
	}
	if r.Waiting() != 0 {
		t.Fatalf("%d waiters left", r.Waiting())
	}
}

func TestWaitGetsEvent(t *testing.T) {
	r := NewRegistry(t.TempDir(), 0)
	go func() {
		for r.Waiting() == 0 {
			time.Sleep(time.Millisecond)
		}
		r.Deliver(Event{Action: ActionAdd, DevPath: "/devices/other", Subsystem: "block"})
		r.Deliver(Event{Action: ActionAdd, DevPath: vdaPath, Subsystem: "block", DevName: "vda", Seqnum: 7})
	}()
	ev, err := r.Wait(context.Background(), vdaMatcher(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Seqnum != 7 || ev.DevName != "vda" {
		t.Fatalf("got %+v", ev)
	}
}

// A device whose event was lost (or came between the first look and the
// registration, which Wait orders against) is still found in sysfs.
func TestWaitRecoversLostEvent(t *testing.T) {
	root := t.TempDir()
	r := NewRegistry(root, 0)
	go func() {
		for r.Waiting() == 0 {
			time.Sleep(time.Millisecond)
		}
		fakeDevice(t, root, vdaPath, "block", "DEVNAME=vda\n")
		r.Lost()
	}()
	start := time.Now()
	ev, err := r.Wait(context.Background(), vdaMatcher(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if ev.DevName != "vda" {
		t.Fatalf("got %+v", ev)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %s", d)
	}
}

func TestWaitTimeout(t *testing.T) {
	r := NewRegistry(t.TempDir(), 300*time.Millisecond)
	start := time.Now()
	_, err := r.Wait(context.Background(), vdaMatcher(), 0)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("gave up after %s, before the timeout", d)
	}
	if r.Waiting() != 0 {
		t.Fatalf("%d waiters left", r.Waiting())
	}
}

func TestWaitCanceled(t *testing.T) {
	r := NewRegistry(t.TempDir(), 0)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for r.Waiting() == 0 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	if _, err := r.Wait(ctx, vdaMatcher(), time.Minute); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
}

func TestMaxWaiters(t *testing.T) {
	r := NewRegistry(t.TempDir(), 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	never := Matcher{What: "nothing", Match: func(*Event) bool { return false }}
	errs := make(chan error, MaxWaiters)
	for range MaxWaiters {
		go func() { _, err := r.Wait(ctx, never, time.Minute); errs <- err }()
	}
	for r.Waiting() < MaxWaiters {
		time.Sleep(time.Millisecond)
	}
	if _, err := r.Wait(ctx, never, time.Minute); !errors.Is(err, ErrTooManyWaiters) {
		t.Fatalf("err = %v", err)
	}
	cancel()
	for range MaxWaiters {
		<-errs
	}
	if r.Waiting() != 0 {
		t.Fatalf("%d waiters left", r.Waiting())
	}
}

// BenchmarkDeliver: the listener's cost per event with 100 waiters.
func BenchmarkDeliver(b *testing.B) {
	r := NewRegistry(b.TempDir(), 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range 100 {
		go r.Wait(ctx, vdaMatcher(), time.Hour)
	}
	for r.Waiting() < 100 {
		time.Sleep(time.Millisecond)
	}
	ev := Event{Action: ActionAdd, DevPath: "/devices/other", Subsystem: "block"}
	b.ResetTimer()
	for range b.N {
		r.Deliver(ev)
	}
}

// A disk found in sysfs whose node answers ENXIO is still being added
// (its sysfs directory exists before the kernel can open it): Wait must
// not return it from the scan, but from its uevent, which the kernel
// sends once the disk opens. A node that opens, or none at all, is ready.
func TestWaitSkipsDiskNotYetOpenable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make device nodes")
	}
	root, dev := t.TempDir(), t.TempDir()
	fakeDevice(t, root, vdaPath, "block", "MAJOR=259\nMINOR=1048575\nDEVNAME=vda\nDEVTYPE=disk\n")
	loopdev.ENXIONode(t, filepath.Join(dev, "vda"))
	r := NewRegistry(root, 0)
	r.devDir = dev
	if _, err := r.Wait(context.Background(), vdaMatcher(), 700*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a disk answering ENXIO was returned from sysfs: %v", err)
	}
	go func() {
		for r.Waiting() == 0 {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond)
		r.Deliver(Event{Action: ActionAdd, DevPath: vdaPath, Subsystem: "block", DevName: "vda", Seqnum: 9})
	}()
	ev, err := r.Wait(context.Background(), vdaMatcher(), 5*time.Second)
	if err != nil || ev.Seqnum != 9 {
		t.Fatalf("want the uevent (seqnum 9), got %+v, %v", ev, err)
	}
	// Once the node opens (here /dev/null's numbers) the scan finds it.
	os.Remove(filepath.Join(dev, "vda"))
	if err := unix.Mknod(filepath.Join(dev, "vda"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	if ev, err := r.Wait(context.Background(), vdaMatcher(), time.Second); err != nil || ev.DevName != "vda" || ev.Seqnum != 0 {
		t.Fatalf("an openable disk in sysfs: %+v, %v", ev, err)
	}
}

// An open that blocks (a SCSI disk in error recovery) holds no Wait past
// its deadline, and a disk whose open is still stuck is neither returned
// nor opened again by later scans: at most one open per node at a time.
func TestWaitBoundsBlockingOpen(t *testing.T) {
	root := t.TempDir()
	fakeDevice(t, root, vdaPath, "block", "DEVNAME=vda\nDEVTYPE=disk\n")
	r := NewRegistry(root, 0)
	r.devDir = "/nonexistent-dev"
	release := make(chan struct{})
	var opens atomic.Int32
	r.open = func(string) error {
		opens.Add(1)
		<-release
		return nil
	}
	for range 3 {
		start := time.Now()
		_, err := r.Wait(context.Background(), vdaMatcher(), 600*time.Millisecond)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("a disk whose open is stuck: %v", err)
		}
		// The stuck open never returns until release: a few seconds of
		// slack still catch a Wait held by it (200 ms was a CI flake risk).
		if d := time.Since(start); d > 600*time.Millisecond+2*probeWait+3*time.Second {
			t.Fatalf("Wait took %v with a 600 ms deadline", d)
		}
	}
	if n := opens.Load(); n != 1 {
		t.Errorf("%d opens of one stuck node, want 1", n)
	}
	close(release)
	// Once the open returns, the next scan opens it again and finds it.
	ev, err := r.Wait(context.Background(), vdaMatcher(), 2*time.Second)
	if err != nil || ev.DevName != "vda" {
		t.Fatalf("after the open returned: %+v, %v", ev, err)
	}
}

// BlockNode finds the disk of a node by the node's numbers (whatever the
// node is called) and puts it through the same readiness check as any
// disk found in sysfs: while the disk's node answers ENXIO only its
// uevent returns it. A name that climbs out of the node directory matches
// nothing.
func TestBlockNodeWaitsUntilReady(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make device nodes")
	}
	const vdbPath = "/devices/pci0000:00/0000:00:03.0/virtio4/block/vdb"
	root, dev := t.TempDir(), t.TempDir()
	fakeDevice(t, root, vdbPath, "block", "MAJOR=259\nMINOR=1048575\nDEVNAME=vdb\nDEVTYPE=disk\n")
	if err := os.MkdirAll(filepath.Join(root, "dev/block"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../"+vdbPath[1:], filepath.Join(root, "dev/block/259:1048575")); err != nil {
		t.Fatal(err)
	}
	// The kernel's node (vdb) and one named by the runtime (rootdisk),
	// both loopdev.ENXIOMajor:ENXIOMinor (259:1048575): opening them is ENXIO.
	for _, n := range []string{"vdb", "rootdisk"} {
		loopdev.ENXIONode(t, filepath.Join(dev, n))
	}
	r := NewRegistry(root, 0)
	r.devDir = dev
	if _, err := r.Wait(context.Background(), BlockNode(dev, "rootdisk"), 700*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a disk answering ENXIO was returned from sysfs: %v", err)
	}
	// The node's numbers are known from the matcher's making, before any
	// Present: a uevent that matches only by them is not dropped when it
	// comes before Wait's first scan.
	byNumbers := &Event{Action: ActionAdd, DevPath: vdbPath, Subsystem: "block", DevName: "vdb", Major: "259", Minor: "1048575"}
	if !BlockNode(dev, "rootdisk").Match(byNumbers) {
		t.Fatal("a fresh BlockNode matcher does not know its node's numbers")
	}
	go func() {
		for r.Waiting() == 0 {
			time.Sleep(time.Millisecond)
		}
		r.Deliver(Event{Action: ActionAdd, DevPath: "/devices/other/block/vdc", Subsystem: "block", DevName: "vdc", Major: "259", Minor: "7", Seqnum: 8})
		r.Deliver(Event{Action: ActionAdd, DevPath: vdbPath, Subsystem: "block", DevName: "vdb", Major: "259", Minor: "1048575", Seqnum: 9})
	}()
	ev, err := r.Wait(context.Background(), BlockNode(dev, "rootdisk"), 5*time.Second)
	if err != nil || ev.Seqnum != 9 || ev.DevName != "vdb" {
		t.Fatalf("want vdb's uevent (seqnum 9) by the node's numbers, got %+v, %v", ev, err)
	}
	// Once the kernel's node opens (here /dev/null's numbers) the scan
	// finds the disk, by the numbers of rootdisk and by the name vdb.
	os.Remove(filepath.Join(dev, "vdb"))
	if err := unix.Mknod(filepath.Join(dev, "vdb"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	if ev, err := r.Wait(context.Background(), BlockNode(dev, "rootdisk"), time.Second); err != nil || ev.DevPath != vdbPath || ev.Seqnum != 0 {
		t.Fatalf("an openable disk in sysfs: %+v, %v", ev, err)
	}
	if err := os.Symlink("../../"+vdbPath[1:], filepath.Join(root, "class/block/vdb")); err != nil {
		t.Fatal(err)
	}
	if ev, err := r.Wait(context.Background(), BlockNode(dev, "vdb"), time.Second); err != nil || ev.DevPath != vdbPath {
		t.Fatalf("by name: %+v, %v", ev, err)
	}
	bad := BlockNode(dev, "../"+filepath.Base(dev)+"/vdb")
	if got := bad.Present(root); len(got) != 0 || bad.Match(&Event{Action: ActionAdd, Subsystem: "block", DevName: "../" + filepath.Base(dev) + "/vdb", Major: "259", Minor: "1048575"}) {
		t.Fatalf("a name with .. matched: %v", got)
	}
}
