package storage

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/uevent"
	"github.com/keelvm/keel/tests/loopdev"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
)

// TestCreateFilesystem: Kata's create_filesystem on a block emptyDir disk
// makes an ext4 with Kata's options (no journal, 128-byte inodes) with the
// guest image's mkfs.ext4, whatever the disk held, then mounts it; a guest
// without mkfs.ext4 gets Unimplemented naming the option.
func TestCreateFilesystem(t *testing.T) {
	m, root := newManager(t)
	if _, err := m.tool("mkfs.ext4"); err != nil {
		t.Fatalf("host mode uses the host's mkfs.ext4 (e2fsprogs): %v", err)
	}
	img := loopdev.File(t, 64<<20)
	// An old filesystem with data on it: create_filesystem replaces it.
	old := t.TempDir()
	must(t, os.WriteFile(filepath.Join(old, "old"), []byte("old data"), 0o644))
	loopdev.Run(t, "mkfs.ext4", "-q", "-F", "-d", old, img)
	dev := loopdev.Attach(t, img)
	mp := filepath.Join(root, "sandbox/storage/emptydir")
	s := Storage{Driver: DriverBlk, Source: dev, Fstype: "ext4", MountPoint: mp, DriverOptions: []string{"create_filesystem"}}
	must(t, m.Add(context.Background(), "c1", "storages", []Storage{s}))
	if fsType(t, mp) != unix.EXT4_SUPER_MAGIC {
		t.Fatalf("%s is not ext4", mp)
	}
	if _, err := os.Stat(filepath.Join(mp, "old")); !os.IsNotExist(err) {
		t.Errorf("the disk's old filesystem was mounted, not a fresh one: %v", err)
	}
	must(t, os.WriteFile(filepath.Join(mp, "f"), []byte("x"), 0o644))
	info := loopdev.Run(t, "dumpe2fs", "-h", dev)
	if strings.Contains(info, "has_journal") || !strings.Contains(info, "Inode size:\t          128") {
		t.Errorf("not Kata's mkfs options (no journal, 128-byte inodes):\n%s", info)
	}
	must(t, m.Release("c1"))
	if ms := mountsUnder(root); len(ms) != 0 {
		t.Fatalf("left mounted: %v", ms)
	}

	// No mkfs.ext4 in the guest image.
	bare := New(Config{Roots: []string{root}, ToolDirs: []string{t.TempDir()}, Devices: uevent.NewRegistry("", 500*time.Millisecond)})
	defer bare.Close()
	err := bare.Add(context.Background(), "c2", "storages", []Storage{s})
	if Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), `storages[0].driver_options "create_filesystem"`) || !strings.Contains(err.Error(), "mkfs.ext4") {
		t.Fatalf("without mkfs.ext4: %v (%s)", err, Code(err))
	}
	if _, err := os.Stat(mp); !os.IsNotExist(err) {
		t.Errorf("mount point created: %v", err)
	}
}
