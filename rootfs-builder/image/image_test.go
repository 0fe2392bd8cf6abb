package image

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func tree(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	os.MkdirAll(filepath.Join(d, "a/b"), 0o755)
	os.WriteFile(filepath.Join(d, "a/b/f"), make([]byte, 5000), 0o644)
	os.Symlink(strings.Repeat("x", 80), filepath.Join(d, "long"))
	return d
}

func TestMeasure(t *testing.T) {
	u, err := Measure(tree(t))
	if err != nil {
		t.Fatal(err)
	}
	// root, a, a/b: 3 dir blocks; f: 2 blocks; long symlink: 1 block.
	if u.Inodes != 5 || u.Bytes != 6*4096 {
		t.Fatalf("usage %+v", u)
	}
	if s := AutoExt4Size(u); s%SizeAlign != 0 || s < MinExt4Size(u) {
		t.Fatalf("auto size %d", s)
	}
}

func TestErofsSizeLimitAndBadSpec(t *testing.T) {
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Skip("erofs-utils not installed")
	}
	d := tree(t)
	out := filepath.Join(t.TempDir(), "x.img")
	_, err := Build(context.Background(), d, out, Spec{FS: EROFS, Size: 4096})
	if !errors.Is(err, ErrTooSmall) {
		t.Fatalf("err = %v, want ErrTooSmall", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatal("output exists after failure")
	}
	if _, err := Build(context.Background(), d, out, Spec{FS: "btrfs"}); err == nil || !strings.Contains(err.Error(), "unknown filesystem") {
		t.Fatalf("err = %v", err)
	}
	if _, err := Build(context.Background(), d, out, Spec{FS: Ext4, Size: 1000}); err == nil || !strings.Contains(err.Error(), "multiple of 4096") {
		t.Fatalf("err = %v", err)
	}
	if _, err := Build(context.Background(), d, out, Spec{FS: Ext4, UUID: "nope"}); err == nil || !strings.Contains(err.Error(), "invalid UUID") {
		t.Fatalf("err = %v", err)
	}
	ents, _ := os.ReadDir(filepath.Dir(out))
	if len(ents) != 0 {
		t.Fatalf("leftovers: %v", ents)
	}
}

func TestParseFS(t *testing.T) {
	for _, ok := range []string{"ext4", "erofs"} {
		if _, err := ParseFS(ok); err != nil {
			t.Error(err)
		}
	}
	if _, err := ParseFS("xfs"); err == nil {
		t.Error("xfs accepted")
	}
}
