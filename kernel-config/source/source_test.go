package source

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// makeTarball builds a tiny linux-source-like .tar.xz.
func makeTarball(t *testing.T, withKconfig bool) string {
	t.Helper()
	if _, err := exec.LookPath("xz"); err != nil {
		t.Skip("xz not installed")
	}
	dir := t.TempDir()
	top := filepath.Join(dir, "linux-source-9.9")
	os.MkdirAll(filepath.Join(top, "arch"), 0o755)
	os.WriteFile(filepath.Join(top, "Makefile"), []byte("VERSION = 9\nPATCHLEVEL = 9\nSUBLEVEL = 1\nEXTRAVERSION = -rc1\n"), 0o644)
	if withKconfig {
		os.WriteFile(filepath.Join(top, "Kconfig"), []byte("mainmenu \"x\"\n"), 0o644)
	}
	tarball := filepath.Join(dir, "linux-source-9.9.tar.xz")
	if out, err := exec.Command("tar", "-cJf", tarball, "-C", dir, "linux-source-9.9").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	return tarball
}

func TestExtractOnceConcurrently(t *testing.T) {
	tarball := makeTarball(t, true)
	dest := filepath.Join(t.TempDir(), "cache", "9.9.1-1")
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = Extract(context.Background(), tarball, dest, io.Discard)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dest, "Kconfig")); err != nil {
		t.Fatal("top directory not stripped:", err)
	}
	if _, err := os.Stat(dest + ".tmp"); !os.IsNotExist(err) {
		t.Error("temporary directory left behind")
	}
	tree, err := FromDir(dest)
	if err != nil {
		t.Fatal(err)
	}
	if tree.Version != "9.9.1-rc1" {
		t.Errorf("version = %q", tree.Version)
	}
	// A second call reuses the tree even when the tarball is gone.
	os.Remove(tarball)
	if _, err := Extract(context.Background(), tarball, dest, io.Discard); err != nil {
		t.Errorf("reuse: %v", err)
	}
}

func TestExtractErrors(t *testing.T) {
	dest := filepath.Join(t.TempDir(), "v")
	_, err := Extract(context.Background(), "/nonexistent/linux-source-0.tar.xz", dest, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/linux-source-0.tar.xz") {
		t.Errorf("missing tarball: %v", err)
	}
	_, err = Extract(context.Background(), makeTarball(t, false), dest, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "no Makefile and Kconfig") {
		t.Errorf("not a kernel: %v", err)
	}
	if _, err := os.Stat(dest); !os.IsNotExist(err) {
		t.Error("failed extraction left the destination")
	}
	if _, err := FromDir(t.TempDir()); err == nil || !strings.Contains(err.Error(), "not a kernel source tree") {
		t.Errorf("FromDir: %v", err)
	}
}

func TestInstalledVersionUnknownPackage(t *testing.T) {
	if _, err := exec.LookPath("dpkg-query"); err != nil {
		t.Skip("no dpkg")
	}
	if _, err := InstalledVersion(context.Background(), "keel-no-such-package"); err == nil {
		t.Error("unknown package reported installed")
	}
}
