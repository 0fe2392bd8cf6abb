package storage

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keelvm/keel/agent/devmapper"
	"github.com/keelvm/keel/tests/loopdev"
	"google.golang.org/grpc/codes"
)

// erofsDisk builds an EROFS image of files with mkfs.erofs and attaches
// it to a loop device.
func erofsDisk(t *testing.T, files map[string]string) string {
	t.Helper()
	return loopdev.Attach(t, erofsImage(t, files))
}

func erofsImage(t *testing.T, files map[string]string) string {
	t.Helper()
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Skip("mkfs.erofs (erofs-utils, scripts/apt-packages.txt) is not installed")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	writeTree(t, src, files)
	img := filepath.Join(dir, "layer.erofs")
	loopdev.Run(t, "mkfs.erofs", "--quiet", img, src)
	return img
}

// ext4Disk makes an ext4 disk holding files ("x -> y" values are symlinks).
func ext4Disk(t *testing.T, files map[string]string) string {
	t.Helper()
	src := filepath.Join(t.TempDir(), "src")
	must(t, os.MkdirAll(src, 0o755))
	writeTree(t, src, files)
	img := loopdev.File(t, 32<<20)
	loopdev.Run(t, "mkfs.ext4", "-q", "-F", "-d", src, img)
	return loopdev.Attach(t, img)
}

func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	must(t, os.MkdirAll(root, 0o755))
	for p, c := range files {
		full := filepath.Join(root, p)
		must(t, os.MkdirAll(filepath.Dir(full), 0o755))
		if target, ok := strings.CutPrefix(c, "-> "); ok {
			must(t, os.Symlink(target, full))
			continue
		}
		must(t, os.WriteFile(full, []byte(c), 0o644))
	}
}

func readString(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// lowerStorage and upperStorage are the storages runtime-rs sends for a
// multi-layer EROFS rootfs (erofs_rootfs.rs).
func lowerStorage(dev, mp string, extra ...string) Storage {
	return Storage{Driver: DriverBlk, Source: dev, Fstype: "erofs", MountPoint: mp,
		Options: append([]string{"ro", optOverlayLower, optMultiLayer}, extra...)}
}

func upperStorage(dev, mp string) Storage {
	return Storage{Driver: DriverBlk, Source: dev, Fstype: "ext4", MountPoint: mp,
		Options: []string{optOverlayUpper, optMultiLayer}}
}

// TestMultiLayerErofs: two EROFS layers and an ext4 upper on loop
// devices become one overlay rootfs: the top layer hides the bottom one,
// writes land on the upper disk, mkdir directives are made, and
// everything is unmounted and removed with the container.
func TestMultiLayerErofs(t *testing.T) {
	m, root := newManager(t)
	top := erofsDisk(t, map[string]string{"a": "top\n"})
	bottom := erofsDisk(t, map[string]string{"a": "bottom\n", "b": "bottom\n", "etc/os": "layers\n"})
	up := ext4Disk(t, nil)
	mp := filepath.Join(root, "shared/containers/c1/rootfs")
	shm := Storage{Driver: DriverEphemeral, Fstype: "tmpfs", MountPoint: filepath.Join(root, "sandbox/shm")}
	ss := []Storage{shm, upperStorage(up, mp),
		lowerStorage(top, mp, optMkdir+"{{ mount 0 }}/upper/made:0755"),
		lowerStorage(bottom, mp)}
	must(t, m.Add(context.Background(), "c1", "storages", ss))

	for f, want := range map[string]string{"a": "top\n", "b": "bottom\n", "etc/os": "layers\n"} {
		if got := readString(t, filepath.Join(mp, f)); got != want {
			t.Errorf("%s = %q, want %q", f, got, want)
		}
	}
	if fi, err := os.Stat(filepath.Join(mp, "made")); err != nil || !fi.IsDir() {
		t.Errorf("X-kata.mkdir.path directory missing in the rootfs: %v", err)
	}
	must(t, os.WriteFile(filepath.Join(mp, "new"), []byte("written\n"), 0o644))
	layers := filepath.Join(root, "containers/c1/multi-layer")
	if got := readString(t, filepath.Join(layers, "upper/upper/new")); got != "written\n" {
		t.Errorf("the write is not on the upper disk: %q", got)
	}
	if n := m.Refs(mp); n != 1 {
		t.Errorf("refs on the rootfs = %d, want 1", n)
	}
	// The overlay, the upper and two lowers; nothing else under the layers.
	if ms := mountsUnder(layers); len(ms) != 3 {
		t.Errorf("layer mounts: %v, want upper, lower-0, lower-1", ms)
	}
	if ms := mountsUnder(mp); len(ms) != 1 {
		t.Errorf("rootfs mounts: %v", ms)
	}

	must(t, m.Release("c1"))
	if ms := append(mountsUnder(layers), mountsUnder(mp)...); len(ms) != 0 {
		t.Fatalf("left mounted after the container: %v", ms)
	}
	if _, err := os.Stat(filepath.Join(root, "containers/c1")); !os.IsNotExist(err) {
		t.Errorf("layer directories left: %v", err)
	}
	if _, err := os.Stat(mp); !os.IsNotExist(err) {
		t.Errorf("rootfs mount point left: %v", err)
	}
	// The write stayed on the upper disk.
	probe := filepath.Join(t.TempDir(), "probe")
	must(t, os.MkdirAll(probe, 0o755))
	loopdev.Run(t, "mount", "-o", "ro", up, probe)
	defer loopdev.Run(t, "umount", probe)
	if got := readString(t, filepath.Join(probe, "upper/new")); got != "written\n" {
		t.Errorf("upper disk after teardown: %q", got)
	}
}

// TestMultiLayerErofsDirUpper: without an ext4 upper, the writable layer
// is a directory under the container's base, removed with the container;
// the overlay goes on the first lower's mount point.
func TestMultiLayerErofsDirUpper(t *testing.T) {
	m, root := newManager(t)
	low := erofsDisk(t, map[string]string{"hello": "from erofs\n"})
	mp := filepath.Join(root, "shared/containers/c2/rootfs")
	must(t, m.Add(context.Background(), "c2", "storages", []Storage{lowerStorage(low, mp)}))
	if got := readString(t, filepath.Join(mp, "hello")); got != "from erofs\n" {
		t.Errorf("hello = %q", got)
	}
	must(t, os.WriteFile(filepath.Join(mp, "scratch"), []byte("x"), 0o644))
	upper := filepath.Join(root, "containers/c2/multi-layer/upper/upper/scratch")
	if _, err := os.Stat(upper); err != nil {
		t.Errorf("the write is not in the directory upper: %v", err)
	}
	must(t, m.Release("c2"))
	if ms := mountsUnder(root); len(ms) != 0 {
		t.Fatalf("left mounted: %v", ms)
	}
	if _, err := os.Stat(filepath.Join(root, "containers/c2")); !os.IsNotExist(err) {
		t.Errorf("the directory upper was not removed: %v", err)
	}
}

// TestMultiLayerErofsBad: malformed groups and a hostile upper disk are
// refused with the field named, leaving nothing mounted or created.
func TestMultiLayerErofsBad(t *testing.T) {
	m, root := newManager(t)
	low := erofsDisk(t, map[string]string{"a": "a\n"})
	up := ext4Disk(t, nil)
	// An upper disk whose "upper" directory is a symlink out of it: the
	// overlay would write into the guest's /etc.
	evil := ext4Disk(t, map[string]string{"upper": "-> /etc"})
	outside := t.TempDir()
	mp := filepath.Join(root, "shared/containers/bad/rootfs")
	good := Storage{Driver: DriverEphemeral, Fstype: "tmpfs", MountPoint: filepath.Join(root, "first")}
	xfsUpper := upperStorage(up, mp)
	xfsUpper.Fstype = "xfs"
	notErofs := lowerStorage(low, mp)
	notErofs.Fstype = "squashfs"
	markerOnly := lowerStorage(low, mp)
	markerOnly.Driver = DriverMultiLayerErofs
	type badCase struct {
		name string
		ss   []Storage
		code codes.Code
		msg  string
	}
	cases := []badCase{
		{"no lower", []Storage{upperStorage(up, mp)}, codes.InvalidArgument, "without an erofs lower"},
		{"two uppers", []Storage{upperStorage(up, mp), upperStorage(up, mp), lowerStorage(low, mp)}, codes.InvalidArgument, "storages[2]: a second upper"},
		{"upper not ext4", []Storage{xfsUpper, lowerStorage(low, mp)}, codes.InvalidArgument, "storages[1].fstype"},
		{"lower not erofs", []Storage{notErofs}, codes.InvalidArgument, "storages[1].fstype"},
		{"marker driver", []Storage{markerOnly}, codes.InvalidArgument, "storages[1].driver"},
		{"dm-verity without GPT", []Storage{lowerStorage(low, mp, optDmVerity)}, codes.InvalidArgument, "GPT"},
		{"dm-verity without root hash", []Storage{lowerStorage(low, mp, optGPT, optPartition+"1", optDmVerity, "X-kata.dmverity.hashoffset=4096")}, codes.InvalidArgument, "roothash is required"},
		{"dm-verity hash offset", []Storage{lowerStorage(low, mp, optGPT, optPartition+"1", optDmVerity, "X-kata.dmverity.roothash=ab", "X-kata.dmverity.hashoffset=1000")}, codes.InvalidArgument, "hashoffset 1000"},
		{"dm-verity salt", []Storage{lowerStorage(low, mp, optGPT, optPartition+"1", optDmVerity, "X-kata.dmverity.roothash=ab", "X-kata.dmverity.hashoffset=4096", "X-kata.dmverity.salt=00 extra")}, codes.InvalidArgument, "salt"},
		{"gpt without number", []Storage{lowerStorage(low, mp, optGPT)}, codes.InvalidArgument, "partition-number"},
		{"mkdir escapes", []Storage{lowerStorage(low, mp, optMkdir+"{{ mount 0 }}/../../../x")}, codes.InvalidArgument, "storages[1].options[3]"},
		{"mkdir absolute", []Storage{lowerStorage(low, mp, optMkdir+outside+"/x")}, codes.InvalidArgument, "mount 0"},
		{"mount point outside", []Storage{lowerStorage(low, outside+"/rootfs")}, codes.InvalidArgument, "outside"},
		{"missing disk", []Storage{lowerStorage("/dev/keel-nope", mp)}, codes.DeadlineExceeded, "storages[1].source"},
		{"upper symlinked out", []Storage{upperStorage(evil, mp), lowerStorage(low, mp)}, codes.InvalidArgument, "symlink"},
	}
	if why := devmapper.Available(); why != "" {
		// This kernel has no device-mapper: well-formed verity options
		// are refused as unsupported, naming the option.
		cases = append(cases, badCase{"dm-verity without device-mapper", []Storage{lowerStorage(low, mp, optGPT, optPartition+"1", optDmVerity,
			"X-kata.dmverity.roothash=ab", "X-kata.dmverity.hashoffset=4096")}, codes.Unimplemented, optDmVerity})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := listTree(t, root)
			err := m.Add(context.Background(), "bad", "storages", append([]Storage{good}, c.ss...))
			if err == nil {
				t.Fatal("accepted")
			}
			if Code(err) != c.code || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err = %v (%s), want %s containing %q", err, Code(err), c.code, c.msg)
			}
			if ms := mountsUnder(root); len(ms) > 0 {
				t.Fatalf("mounts left: %v", ms)
			}
			if after := listTree(t, root); after != before {
				t.Fatalf("files left:\nbefore %s\nafter  %s", before, after)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Fatalf("created outside the roots: %v", ents)
			}
		})
	}
}
