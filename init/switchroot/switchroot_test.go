package switchroot

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestRootFSType(t *testing.T) {
	initramfs := "1 1 0:2 / / rw - rootfs rootfs rw\n20 1 0:20 / /proc rw,nosuid - proc proc rw\n"
	if got := RootFSType(initramfs); got != "rootfs" {
		t.Errorf("initramfs: %q", got)
	}
	switched := initramfs + "30 1 259:0 / / ro,relatime shared:1 - ext4 /dev/pmem0 ro,dax=always\n"
	if got := RootFSType(switched); got != "ext4" {
		t.Errorf("switched: %q", got)
	}
	if got := RootFSType("garbage\n1 2 3\n"); got != "" {
		t.Errorf("garbage: %q", got)
	}
	if RootIsInitramfs() {
		t.Error("the test host's root is not an initramfs")
	}
	if IsRoot("/dev/null") || IsRoot("/nonexistent") {
		t.Error("IsRoot true for a non-root device")
	}
	if src := rootSource(t); src != "" && !IsRoot(src) {
		t.Errorf("IsRoot(%s) false for the device mounted on /", src)
	}
}

func TestMountData(t *testing.T) {
	for _, tc := range []struct {
		fs, flags string
		dax       bool
		want      string
	}{
		{"ext4", "", true, "dax=always"},
		{"erofs", "noatime", true, "noatime,dax=always"},
		{"ext4", "dax=never", true, "dax=never"},
		{"ext4", "", false, ""},
		{"btrfs", "", true, ""},
	} {
		if got := MountData(tc.fs, tc.flags, tc.dax); got != tc.want {
			t.Errorf("MountData(%s, %q, %v) = %q want %q", tc.fs, tc.flags, tc.dax, got, tc.want)
		}
	}
}

func TestSupportsDAX(t *testing.T) {
	sys := t.TempDir()
	mk := func(p, v string) {
		p = filepath.Join(sys, "class/block", p)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(v), 0o644)
	}
	mk("pmem0/queue/dax", "1\n")
	mk("vda/queue/dax", "0\n")
	mk("pmem1/pmem1p1/size", "1")
	mk("pmem1/queue/dax", "1\n")
	os.Symlink("pmem1/pmem1p1", filepath.Join(sys, "class/block/pmem1p1"))
	for dev, want := range map[string]bool{"/dev/pmem0": true, "/dev/vda": false, "/dev/pmem1p1": true, "/dev/none": false} {
		if got := SupportsDAX(sys, dev); got != want {
			t.Errorf("SupportsDAX(%s) = %v", dev, got)
		}
	}
}

func TestFindInitAndWait(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "sbin"), 0o755)
	os.WriteFile(filepath.Join(root, "sbin/init"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(root, "noexec"), nil, 0o644)
	if got, err := FindInit(root, []string{"", "relative", "/noexec", "/usr/bin/keel-agent", "/sbin/init"}); err != nil || got != "/sbin/init" {
		t.Errorf("FindInit = %q, %v", got, err)
	}
	if _, err := FindInit(root, []string{"/noexec"}); err == nil {
		t.Error("non-executable init accepted")
	}
	start := time.Now()
	if err := WaitDevice(filepath.Join(root, "dev/pmem0"), 50*time.Millisecond); err == nil || time.Since(start) > time.Second {
		t.Errorf("WaitDevice: %v after %v", err, time.Since(start))
	}
	p := filepath.Join(root, "late")
	go func() { time.Sleep(30 * time.Millisecond); os.WriteFile(p, nil, 0o644) }()
	if err := WaitDevice(p, 5*time.Second); err != nil {
		t.Error(err)
	}
}

func TestRemoveTreeStaysOnOneFilesystem(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"a/b/c", "keep/x", "d"} {
		os.MkdirAll(filepath.Join(dir, p), 0o755)
		os.WriteFile(filepath.Join(dir, p, "f"), []byte("x"), 0o644)
	}
	os.Symlink("/etc/passwd", filepath.Join(dir, "link"))
	var st unix.Stat_t
	unix.Stat(dir, &st)
	n := removeTree(dir, st.Dev, filepath.Join(dir, "keep"))
	left, _ := os.ReadDir(dir)
	if len(left) != 1 || left[0].Name() != "keep" || n != 7 {
		t.Errorf("removed %d, left %v", n, left)
	}
	if _, err := os.Stat("/etc/passwd"); err != nil {
		t.Fatal("followed a symlink!")
	}
	// another device id: nothing is touched
	if n := removeTree(dir, st.Dev+1, ""); n != 0 {
		t.Errorf("crossed filesystems: %d", n)
	}
}

func FuzzRootFSType(f *testing.F) {
	f.Add("1 1 0:2 / / rw - rootfs rootfs rw\n")
	f.Add("30 1 259:0 / / ro shared:1 - ext4 /dev/pmem0 ro,dax=always\n1 2 3 4 / 6 7 8 -")
	f.Fuzz(func(t *testing.T, s string) {
		_ = RootFSType(s)
		_ = MountData(s, s, true)
	})
}

// rootSource returns the device of / from mountinfo when it is a /dev path.
func rootSource(t *testing.T) string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	src := ""
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 9 && f[4] == "/" {
			for i := 6; i < len(f)-2; i++ {
				if f[i] == "-" {
					src = f[i+2]
				}
			}
		}
	}
	if !strings.HasPrefix(src, "/dev/") {
		return ""
	}
	if _, err := os.Stat(src); err != nil {
		return ""
	}
	return src
}
