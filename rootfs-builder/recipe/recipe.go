// Package recipe populates a root filesystem directory for a Keel guest.
// Each Recipe fills an empty directory; turning the directory into an
// image, initrd or copy is the job of rootfs-builder/image and friends.
//
// Every recipe installs the agent as /sbin/init (with /init pointing to it,
// so the same tree works as an initramfs) and leaves mount points for the
// agent's PID 1 setup: /dev /proc /sys /run /tmp.
package recipe

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/keelvm/keel/rootfs-builder/manifest"
)

// Options are the inputs shared by all recipes; each recipe uses the ones
// it needs and rejects missing required ones.
type Options struct {
	// Agent is the static keel-agent binary, installed as /sbin/init.
	Agent string
	// Busybox, if set, is a static busybox installed as /bin/busybox with
	// applet symlinks (minimal recipe; handy for debugging and tests).
	Busybox string
	// OCI is an OCI image layout directory or a `docker save` tarball.
	OCI string
	// Platform is "os/arch[/variant]" of the image to take from a
	// multi-platform index; empty means linux on the build machine's arch.
	Platform string
	// Limits bound what the image may unpack to (zero: the oci package's
	// defaults); KeepSELinux keeps security.selinux labels from layers.
	MaxUnpackedSize, MaxFiles int64
	KeepSELinux               bool
	// Release and Mirror select the Debian suite and apt mirror.
	Release string
	Mirror  string
	// Packages are extra Debian packages bootstrapped into the debian
	// recipe's tree (mmdebstrap/debootstrap --include), e.g. runc, crun;
	// each set of packages has its own cached bootstrap.
	Packages []string
	// CacheDir holds reusable downloads (debian bootstrap cache).
	CacheDir string
	// Progress receives human progress lines; nil discards them.
	Progress func(format string, args ...any)
}

func (o Options) progress(format string, args ...any) {
	if o.Progress != nil {
		o.Progress(format, args...)
	}
}

// Input is one file that went into a build, recorded in the manifest.
type Input = manifest.Input

// Result describes what a recipe used.
type Result struct {
	Inputs []Input
	// NewestMTime is the newest mtime (Unix seconds) among the input's
	// own files, when the recipe's input dates them (oci); 0 otherwise.
	NewestMTime int64
}

// Recipe fills dir (which exists and is empty) with a root filesystem.
type Recipe interface {
	Name() string
	Build(ctx context.Context, dir string, opts Options) (*Result, error)
}

var recipes = map[string]Recipe{
	"minimal": Minimal{},
	"oci":     OCI{},
	"debian":  Debian{},
}

// Names lists the known recipes, sorted.
func Names() []string {
	var n []string
	for k := range recipes {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// Lookup returns the recipe called name.
func Lookup(name string) (Recipe, error) {
	r, ok := recipes[name]
	if !ok {
		return nil, fmt.Errorf("unknown recipe %q (known: %v)", name, Names())
	}
	return r, nil
}

// FileInput hashes path for the manifest.
func FileInput(role, path string) (Input, error) {
	f, err := os.Open(path)
	if err != nil {
		return Input{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return Input{}, fmt.Errorf("unable to hash %s: %w", path, err)
	}
	return Input{Role: role, Path: path, SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}, nil
}
