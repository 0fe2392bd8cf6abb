package guestkernel

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeApt puts fake apt-cache, apt-get and dpkg-deb first in PATH. They
// serve linux-image-9.9.9-1-amd64 at version ver from a prepared tree and
// record calls in state/. FAKE_APT_BROKEN makes apt-cache fail;
// FAKE_NEED_UPDATE makes downloads fail until apt-get update ran.
func fakeApt(t *testing.T, ver string) (state string) {
	t.Helper()
	bin, state, tree := t.TempDir(), t.TempDir(), t.TempDir()
	mods := filepath.Join(tree, "lib/modules/9.9.9-1-amd64")
	writeFile(t, filepath.Join(tree, "boot/vmlinuz-9.9.9-1-amd64"), []byte("bzImage"))
	writeFile(t, filepath.Join(mods, "kernel/fs/a.ko"), fakeModule(t, "name=a", "depends=b"))
	writeFile(t, filepath.Join(mods, "kernel/lib/b.ko"), fakeModule(t, "name=b", "depends="))
	writeFile(t, filepath.Join(mods, "modules.builtin"), []byte("kernel/drivers/dax/dax.ko\n"))
	scripts := map[string]string{
		"apt-cache": `[ -n "$FAKE_APT_BROKEN" ] && { echo "E: broken" >&2; exit 100; }
echo "Package: linux-image-amd64"
echo "Depends: linux-image-9.9.9-1-amd64 (= ` + ver + `)"`,
		"apt-get": `echo "$@" >> ` + state + `/apt-get.log
case "$1" in
update) touch ` + state + `/updated ;;
download)
  if [ -n "$FAKE_NEED_UPDATE" ] && [ ! -f ` + state + `/updated ]; then echo "E: 404" >&2; exit 100; fi
  pv="$3"; touch "${pv%%=*}_${pv#*=}_amd64.deb" ;;
esac`,
		"dpkg-deb": `[ "$1" = -x ] && [ -f "$2" ] || exit 2
cp -a ` + tree + ` "$3"`,
	}
	for name, body := range scripts {
		writeFile(t, filepath.Join(bin, name), []byte("#!/bin/sh\n"+body+"\n"))
		if err := os.Chmod(filepath.Join(bin, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	t.Setenv("FAKE_APT_BROKEN", "")
	t.Setenv("FAKE_NEED_UPDATE", "")
	return state
}

func noTempDirs(t *testing.T, root string) {
	t.Helper()
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".fetch-") || strings.HasSuffix(e.Name(), ".tmp") {
			t.Errorf("leftover %s in cache root", e.Name())
		}
	}
}

func TestEnsureFetchExtractAndReuse(t *testing.T) {
	state := fakeApt(t, "9.9.9-1")
	root := t.TempDir()
	ctx := context.Background()
	k, err := EnsureIn(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if k.Version != "9.9.9-1-amd64" || k.PackageVersion != "9.9.9-1" || k.Package != "linux-image-9.9.9-1-amd64" {
		t.Fatalf("kernel %+v", k)
	}
	if k.VmlinuzPath != filepath.Join(root, "9.9.9-1/boot/vmlinuz-9.9.9-1-amd64") {
		t.Fatalf("vmlinuz %s", k.VmlinuzPath)
	}
	mods, err := k.ModulesFor("a", "dax")
	if err != nil || len(mods) != 2 || mods[0].Name != "b" {
		t.Fatalf("ModulesFor = %+v, %v", mods, err)
	}
	noTempDirs(t, root)
	if _, err := os.Stat(filepath.Join(state, "updated")); err == nil {
		t.Error("apt-get update ran although the download worked")
	}

	// Within ResolveTTL apt is not consulted at all.
	t.Setenv("FAKE_APT_BROKEN", "1")
	if _, err := EnsureIn(ctx, root); err != nil {
		t.Fatalf("cached kernel not reused: %v", err)
	}
	// Past the TTL, a broken apt falls back to the newest cached kernel.
	old := time.Now().Add(-2 * ResolveTTL)
	if err := os.Chtimes(filepath.Join(root, resolvedName), old, old); err != nil {
		t.Fatal(err)
	}
	k2, err := EnsureIn(ctx, root)
	if err != nil || k2.VmlinuzPath != k.VmlinuzPath {
		t.Fatalf("offline fallback = %+v, %v", k2, err)
	}
}

func TestEnsureUpdatesAptWhenDownloadFails(t *testing.T) {
	state := fakeApt(t, "9.9.9-2")
	t.Setenv("FAKE_NEED_UPDATE", "1")
	root := t.TempDir()
	if _, err := EnsureIn(context.Background(), root); err != nil {
		t.Fatal(err)
	}
	log, _ := os.ReadFile(filepath.Join(state, "apt-get.log"))
	if got := strings.Count(string(log), "download"); got != 2 || !strings.Contains(string(log), "update") {
		t.Fatalf("apt-get calls:\n%s", log)
	}
	noTempDirs(t, root)
}

func TestEnsureFailsCleanlyWithoutAptOrCache(t *testing.T) {
	fakeApt(t, "9.9.9-3")
	t.Setenv("FAKE_APT_BROKEN", "1")
	root := t.TempDir()
	_, err := EnsureIn(context.Background(), root)
	if err == nil || !strings.Contains(err.Error(), "broken") {
		t.Fatalf("err = %v, want apt-cache's complaint", err)
	}
	noTempDirs(t, root)
}

func TestResolutionIgnoresBadRecord(t *testing.T) {
	root := t.TempDir()
	for _, bad := range []string{"", "../etc", ".lock", "missing-version"} {
		writeFile(t, filepath.Join(root, resolvedName), []byte(bad+"\n"))
		if k, err := recentResolution(root); err == nil {
			t.Fatalf("record %q accepted: %+v", bad, k)
		}
	}
}
