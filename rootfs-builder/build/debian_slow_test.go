package build

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/keelvm/keel/rootfs-builder/image"
	"github.com/keelvm/keel/rootfs-builder/recipe"
)

// TestDebianSlow bootstraps (or reuses the cached) Debian minbase and
// builds an erofs DAX image twice, checking the agent is /sbin/init and the
// two images are identical. Slow tier: set KEEL_SLOW_TESTS=1; the first run
// downloads ~40 MB from the configured apt mirror (~3 min under load).
func TestDebianSlow(t *testing.T) {
	if os.Getenv("KEEL_SLOW_TESTS") == "" {
		t.Skip("slow tier: set KEEL_SLOW_TESTS=1")
	}
	_, errM := exec.LookPath("mmdebstrap")
	_, errD := exec.LookPath("debootstrap")
	if errM != nil && errD != nil {
		t.Skip("neither mmdebstrap nor debootstrap installed")
	}
	needTools(t, "mkfs.erofs")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	var sums []string
	for range 2 {
		out := filepath.Join(t.TempDir(), "debian.img")
		start := time.Now()
		m, err := Run(ctx, Config{
			Recipe: "debian", Output: OutputImage, FS: image.EROFS, DAX: true, Out: out, Epoch: 1700000000,
			Options: RecipeOptions{Agent: busybox, CacheDir: recipe.DefaultCacheDir, Progress: t.Logf},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("debian image %d MiB in %v", m.Size>>20, time.Since(start).Round(time.Second))
		sums = append(sums, m.SHA256)
	}
	if sums[0] != sums[1] {
		t.Fatalf("two builds from the same bootstrap differ: %s %s", sums[0], sums[1])
	}
}
