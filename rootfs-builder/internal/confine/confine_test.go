package confine

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestClampTimes: newer mtimes become the epoch, older ones stay, symlinks
// are clamped themselves (their targets untouched), directories last.
func TestClampTimes(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "root")
	os.MkdirAll(filepath.Join(dir, "d"), 0o755)
	old, outside := filepath.Join(dir, "d/old"), filepath.Join(parent, "outside")
	os.WriteFile(old, nil, 0o644)
	os.WriteFile(filepath.Join(dir, "d/new"), nil, 0o644)
	os.WriteFile(outside, nil, 0o644)
	os.Chtimes(old, time.Unix(100, 0), time.Unix(100, 0))
	os.Symlink(outside, filepath.Join(dir, "d/link"))
	before, _ := os.Stat(outside)
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := ClampTimes(r, 5000); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]int64{"d/old": 100, "d/new": 5000, "d/link": 5000, "d": 5000, ".": 5000} {
		st, err := os.Lstat(filepath.Join(dir, p))
		if err != nil || st.ModTime().Unix() != want {
			t.Errorf("%s: mtime %v %v, want %d", p, st.ModTime().Unix(), err, want)
		}
	}
	if after, _ := os.Stat(outside); !after.ModTime().Equal(before.ModTime()) {
		t.Error("the symlink's target outside the root was touched")
	}
}

// TestConfinedWrites: writes, times and xattrs through a parent symlink
// that leaves the root fail; WriteFile replaces a planted symlink instead
// of writing through it.
func TestConfinedWrites(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "root")
	host := filepath.Join(parent, "host")
	os.Mkdir(dir, 0o755)
	os.Mkdir(host, 0o755)
	os.WriteFile(filepath.Join(host, "f"), []byte("host"), 0o644)
	os.Symlink(host, filepath.Join(dir, "esc"))
	os.Symlink(filepath.Join(host, "f"), filepath.Join(dir, "planted"))
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for name, err := range map[string]error{
		"WriteFile": WriteFile(r, "esc/f", []byte("pwned"), 0o644),
		"Lutimes":   Lutimes(r, "esc/f", time.Unix(1, 0), time.Unix(1, 0)),
		"Lsetxattr": Lsetxattr(r, "esc/f", "user.x", []byte("y")),
		"Mknod":     Mknod(r, "esc/fifo", 0o010600, 0),
	} {
		if err == nil || !strings.Contains(err.Error(), "escapes") {
			t.Errorf("%s through an escaping symlink: %v", name, err)
		}
	}
	if err := WriteFile(r, "planted", []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(host, "f")); string(b) != "host" {
		t.Fatalf("host file changed: %q", b)
	}
	if st, err := os.Lstat(filepath.Join(dir, "planted")); err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o600 {
		t.Fatalf("planted: %v %v", st, err)
	}
	if _, err := os.Stat(filepath.Join(host, "fifo")); !os.IsNotExist(err) {
		t.Fatal("fifo created on the host")
	}
}
