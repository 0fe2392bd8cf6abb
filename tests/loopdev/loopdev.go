// Package loopdev gives host-mode tests real block devices: a file
// attached to a loop device with losetup(8), detached at cleanup.
package loopdev

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Available says why loop devices cannot be used here, or "" when they can.
func Available() string {
	if os.Geteuid() != 0 {
		return "loop devices need root"
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return "no /dev/loop-control: " + err.Error()
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		return "losetup (util-linux) is not installed"
	}
	return ""
}

// File creates a sparse file of size bytes in a test temp dir.
func File(t testing.TB, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}

// Attach attaches file to a free loop device and returns its /dev path; the
// device is detached when the test ends. The test is skipped when loop
// devices are unavailable.
func Attach(t testing.TB, file string) string {
	t.Helper()
	return attach(t, file)
}

// AttachPartitioned is Attach with the kernel reading the file's
// partition table: partition N appears as <dev>pN.
func AttachPartitioned(t testing.TB, file string) string {
	t.Helper()
	return attach(t, file, "--partscan")
}

func attach(t testing.TB, file string, extra ...string) string {
	t.Helper()
	if why := Available(); why != "" {
		t.Skip(why)
	}
	out, err := exec.Command("losetup", append(append([]string{}, extra...), "--find", "--show", file)...).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup %s: %v: %s", file, err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

// Run runs a command and fails the test with its output on error.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
