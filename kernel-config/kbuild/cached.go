package kbuild

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/keelvm/keel/kernel-config/fragments"
	"github.com/keelvm/keel/kernel-config/source"
)

// ErrNotBuilt means the default kernel is not in the cache yet
// (`make kernel` builds it).
var ErrNotBuilt = errors.New("kernel not built yet (make kernel)")

// Built is a finished build of the default fragments, as VM tests boot it.
type Built struct {
	Dir     string // the cache entry
	BzImage string
	Vmlinux string // uncompressed ELF with the PVH entry: boots faster under TCG
}

// DefaultBuilt finds the cached build of the default fragments for arch
// against the installed linux-source package, without building anything.
// It returns an error wrapping ErrNotBuilt when there is none.
func DefaultBuilt(ctx context.Context, arch string) (*Built, error) {
	version, err := source.InstalledVersion(ctx, source.DefaultPackage)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotBuilt, err)
	}
	frags, err := fragments.Select(fragments.DefaultSpec(arch))
	if err != nil {
		return nil, err
	}
	digest, err := Digest(Options{
		Source:    &source.Tree{Package: source.DefaultPackage, Version: version},
		Arch:      arch,
		Fragments: frags,
	})
	if err != nil {
		return nil, err
	}
	b := &Built{Dir: filepath.Join(DefaultCache, digest)}
	b.BzImage = filepath.Join(b.Dir, "bzImage")
	b.Vmlinux = filepath.Join(b.Dir, "vmlinux")
	if _, err := os.Stat(b.BzImage); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotBuilt, err)
	}
	if _, err := os.Stat(b.Vmlinux); err != nil {
		b.Vmlinux = ""
	}
	return b, nil
}
