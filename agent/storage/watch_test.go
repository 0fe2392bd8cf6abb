package storage

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestWatchableSourceSwappedMidWalk: a directory inside a watched source
// is swapped, over and over, with a symlink to a directory outside the
// source (renameat2 RENAME_EXCHANGE, as a container writing the share can)
// while the source is mirrored: nothing from outside the source ever lands
// in the copy, with openat2 and with the per-component openat fallback.
// (Before, only the last component of a copied file was opened
// O_NOFOLLOW: a directory swapped between the walk and the copy was
// followed.)
func TestWatchableSourceSwappedMidWalk(t *testing.T) {
	for _, fallback := range []bool{false, true} {
		name := "openat2"
		if fallback {
			name = "openat-fallback"
		}
		t.Run(name, func(t *testing.T) {
			if fallback {
				noOpenat2.Store(true)
				t.Cleanup(func() { noOpenat2.Store(false) })
			}
			root := t.TempDir()
			src := filepath.Join(root, "src")
			must(t, os.MkdirAll(filepath.Join(src, "sub"), 0o755))
			must(t, os.WriteFile(filepath.Join(src, "sub/key"), []byte("inside"), 0o644))
			must(t, os.WriteFile(filepath.Join(src, "top"), []byte("top"), 0o644))
			outside := filepath.Join(root, "outside")
			must(t, os.MkdirAll(outside, 0o755))
			must(t, os.WriteFile(filepath.Join(outside, "key"), []byte("SECRET"), 0o644))
			link := filepath.Join(root, "link")
			must(t, os.Symlink(outside, link))
			dst := filepath.Join(root, "dst")
			must(t, os.Mkdir(dst, 0o755))

			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(src, "sub"), unix.AT_FDCWD, link, unix.RENAME_EXCHANGE); err != nil {
						t.Errorf("rename exchange: %v", err)
						return
					}
				}
			}()
			defer func() { close(stop); wg.Wait() }()

			leaked := func() string {
				var found string
				filepath.Walk(dst, func(p string, fi fs.FileInfo, err error) error {
					if err == nil && fi.Mode().IsRegular() {
						if b, _ := os.ReadFile(p); strings.Contains(string(b), "SECRET") {
							found = p
						}
					}
					return nil
				})
				return found
			}
			copied, failed := 0, 0
			deadline := time.Now().Add(3 * time.Second)
			for time.Now().Before(deadline) {
				e := &watched{src: src, dst: dst, seen: map[string]time.Time{}}
				if err := mirror(e); err != nil {
					failed++
				} else {
					copied++
				}
				if p := leaked(); p != "" {
					t.Fatalf("after %d mirrors: %s holds the content of %s, outside the source", copied+failed, p, outside)
				}
			}
			if copied == 0 {
				t.Fatalf("no mirror succeeded in %d tries", failed)
			}
			t.Logf("%d mirrors, %d failed on a swapped entry, nothing leaked", copied, failed)
		})
	}
}
