package loopdev

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// The numbers of a block node no disk has: blkext's last minor. Opening
// such a node answers ENXIO, as a hot-plugged disk's node does until the
// kernel has finished adding the disk.
const (
	ENXIOMajor = 259
	ENXIOMinor = 1<<20 - 1
)

// ENXIONode makes a block node at path with ENXIOMajor:ENXIOMinor,
// checks that opening it answers ENXIO (not, say, EACCES on a nodev
// mount) and removes it at cleanup. It needs root.
func ENXIONode(t testing.TB, path string) {
	t.Helper()
	if err := unix.Mknod(path, unix.S_IFBLK|0o600, int(unix.Mkdev(ENXIOMajor, ENXIOMinor))); err != nil {
		t.Fatalf("unable to make block node %s: %v", path, err)
	}
	t.Cleanup(func() { os.Remove(path) })
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err == nil {
		unix.Close(fd)
	}
	if err != unix.ENXIO {
		t.Fatalf("open of %s: %v, want ENXIO", path, err)
	}
}
