package guestkernel

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestEnsureDebianKernel fetches (first run: ~70 MB, a few seconds) or
// reuses the cached Debian kernel and checks the module resolution against
// the real tree.
func TestEnsureDebianKernel(t *testing.T) {
	for _, tool := range []string{"apt-get", "apt-cache", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not available: %v", tool, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	k, err := Ensure(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel %s from %s_%s in %v", k.Version, k.Package, k.PackageVersion, time.Since(start))
	if !strings.HasPrefix(k.Package, "linux-image-"+k.Version) {
		t.Errorf("package %q does not match release %q", k.Package, k.Version)
	}
	if st, err := os.Stat(k.VmlinuzPath); err != nil || st.Size() < 1<<20 {
		t.Fatalf("vmlinuz: %v", err)
	}

	// A second call must hit the cache and return the same tree.
	again, err := Ensure(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if again.ModulesDir != k.ModulesDir {
		t.Fatalf("second Ensure returned %s, first %s", again.ModulesDir, k.ModulesDir)
	}

	mods, err := k.ModulesFor(GuestModules()...)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range mods {
		pos[m.Name] = i
	}
	for _, pair := range [][2]string{
		{"virtio", "virtio_pci"}, {"virtio_ring", "virtio_blk"}, {"vsock", "vmw_vsock_virtio_transport"},
		{"vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"},
		{"libnvdimm", "nd_pmem"}, {"libnvdimm", "nfit"}, {"jbd2", "ext4"}, {"mbcache", "ext4"}, {"crc16", "ext4"},
	} {
		a, oka := pos[pair[0]]
		b, okb := pos[pair[1]]
		if !oka || !okb || a >= b {
			t.Errorf("%s (at %d, present %v) must load before %s (at %d, present %v)", pair[0], a, oka, pair[1], b, okb)
		}
	}
	var names []string
	for _, m := range mods {
		names = append(names, m.Name)
	}
	t.Logf("%d guest modules: %s", len(mods), strings.Join(names, " "))
	if strings.HasSuffix(mods[0].Src, ".ko") {
		// Debian 12 ships uncompressed modules; InstallModules copies as is.
		t.Logf("modules are uncompressed .ko")
	}

	start = time.Now()
	vmlinux, err := k.VmlinuxPath(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := hasPVHNote(vmlinux); err != nil {
		t.Fatal(err)
	}
	t.Logf("PVH vmlinux %s ready in %v", vmlinux, time.Since(start))

	root := t.TempDir()
	paths, err := k.InstallModules(ctx, root, mods)
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != len(mods) {
		t.Fatalf("installed %d of %d modules", len(paths), len(mods))
	}
	for _, p := range paths {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestModulesDepMatchesDepmod compares the generated modules.dep with
// depmod's, as sets of dependencies per module (depmod's order among
// independent modules differs).
func TestModulesDepMatchesDepmod(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode")
	}
	depmod, err := exec.LookPath("depmod")
	if err != nil {
		t.Skip("depmod not available")
	}
	k, err := newestCached(CacheRoot())
	if err != nil {
		t.Skipf("no cached kernel yet: %v", err)
	}
	// Debian's kmod has no --outdir, so give depmod a tree of its own whose
	// kernel/ is a symlink into the (read-only to us) cache.
	out := t.TempDir()
	dst := filepath.Join(out, "lib/modules", k.Version)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(k.ModulesDir, "kernel"), filepath.Join(dst, "kernel")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"modules.builtin", "modules.order"} {
		b, err := os.ReadFile(filepath.Join(k.ModulesDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := exec.Command(depmod, "-b", out, k.Version).CombinedOutput(); err != nil {
		t.Fatalf("depmod: %v: %s", err, b)
	}
	want := readDepSets(t, filepath.Join(dst, "modules.dep"))
	got := readDepSets(t, filepath.Join(k.ModulesDir, "modules.dep"))
	if len(got) != len(want) {
		t.Errorf("generated %d entries, depmod %d", len(got), len(want))
	}
	bad := 0
	for mod, w := range want {
		if g := got[mod]; g != w && bad < 5 {
			bad++
			t.Errorf("%s: deps %q, depmod %q", mod, g, w)
		}
	}
}

func readDepSets(t *testing.T, p string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		mod, deps, _ := strings.Cut(line, ":")
		d := strings.Fields(deps)
		sort.Strings(d)
		m[mod] = strings.Join(d, " ")
	}
	return m
}
