// Package build runs a complete rootfs build — recipe, kernel modules,
// output (image, initrd or directory) and manifest — as the keel-rootfs
// CLI does. Library users (tests, VM harnesses) call Run directly.
package build

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/keelvm/keel/rootfs-builder/cpio"
	"github.com/keelvm/keel/rootfs-builder/image"
	"github.com/keelvm/keel/rootfs-builder/kmod"
	"github.com/keelvm/keel/rootfs-builder/manifest"
	"github.com/keelvm/keel/rootfs-builder/oci"
	"github.com/keelvm/keel/rootfs-builder/pfn"
	"github.com/keelvm/keel/rootfs-builder/recipe"
)

// Output kinds.
const (
	OutputImage  = "image"
	OutputInitrd = "initrd"
	OutputDir    = "dir"
)

// Config is one build.
type Config struct {
	Recipe string
	recipe.Options
	// Output is image, initrd or dir; Out is the artifact path.
	Output string
	Out    string
	// Image settings.
	FS   image.FS
	Size int64
	DAX  bool
	// DAXMode: pfn.ModeRAM (default) or pfn.ModePMEM.
	DAXMode pfn.Mode
	// Initrd compression (default gzip).
	Compression cpio.Compression
	// ModulesDir (a /lib/modules/<kver> tree with modules.dep) and the
	// modules to include with their dependencies.
	ModulesDir string
	Modules    []string
	// Epoch (SOURCE_DATE_EPOCH) clamps every file's mtime: later ones
	// become Epoch, older ones are kept.
	Epoch int64
	// EpochFromImage, when SOURCE_DATE_EPOCH is unset, takes the epoch
	// from the input instead: the newest mtime in the image's layers (oci
	// recipe), so no image file's time changes (timestamp-checked caches
	// such as .pyc stay valid) and the build stays reproducible. Recipes
	// without a dated input keep Epoch.
	EpochFromImage bool
}

func (c *Config) progress(format string, args ...any) {
	if c.Progress != nil {
		c.Progress(format, args...)
	}
}

// ErrUsage marks configuration errors (the CLI exits 2 for them).
var ErrUsage = errors.New("usage")

// IsUsage reports whether err is a configuration (usage) error.
func IsUsage(err error) bool { return errors.Is(err, ErrUsage) }

// RecipeOptions is recipe.Options, re-exported so callers of Run need
// only this package.
type RecipeOptions = recipe.Options

type recipeOptions = RecipeOptions

func usagef(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUsage, fmt.Sprintf(format, args...))
}

// Validate checks the configuration before any work is done.
func (c *Config) Validate() error {
	if _, err := recipe.Lookup(c.Recipe); err != nil {
		return usagef("%v", err)
	}
	switch c.Output {
	case OutputImage:
		if _, err := image.ParseFS(string(c.FS)); err != nil {
			return usagef("%v", err)
		}
	case OutputInitrd, OutputDir:
		if c.DAX || c.DAXMode != pfn.ModeNone {
			return usagef("--dax only applies to --output image")
		}
	default:
		return usagef("unknown output %q (want image, initrd or dir)", c.Output)
	}
	if c.Out == "" {
		return usagef("missing -o OUTPUT")
	}
	if c.Size < 0 {
		return usagef("negative --size")
	}
	if (c.ModulesDir == "") != (len(c.Modules) == 0) {
		return usagef("--modules-dir and --modules go together")
	}
	if c.Platform != "" {
		if _, err := oci.ParsePlatform(c.Platform); err != nil {
			return usagef("--platform: %v", err)
		}
	}
	if c.MaxUnpackedSize < 0 || c.MaxFiles < 0 {
		return usagef("negative --max-unpacked-size or --max-files")
	}
	if c.Agent == "" {
		return usagef("missing --agent PATH")
	}
	if err := recipe.CheckStaticBinary(c.Agent); err != nil {
		return err
	}
	dir := filepath.Dir(c.Out)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return fmt.Errorf("output directory %s does not exist", dir)
	}
	if st, err := os.Lstat(c.Out); err == nil && (st.IsDir() || c.Output == OutputDir) {
		return fmt.Errorf("output %s already exists", c.Out)
	}
	return nil
}

// Run performs the build and returns the manifest it wrote next to Out.
// On failure nothing is left under Out or its manifest name.
func Run(ctx context.Context, c Config) (*manifest.Manifest, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	r, _ := recipe.Lookup(c.Recipe)
	// Stage next to the output: same filesystem, so dir output is a rename
	// and there is no cross-device copy.
	stage, err := os.MkdirTemp(filepath.Dir(c.Out), ".keel-rootfs-stage-*")
	if err != nil {
		return nil, fmt.Errorf("output directory %s is not writable: %w", filepath.Dir(c.Out), err)
	}
	defer os.RemoveAll(stage)
	if err := os.Chmod(stage, 0o755); err != nil {
		return nil, err
	}
	c.progress("recipe %s: populating rootfs", r.Name())
	res, err := r.Build(ctx, stage, c.Options)
	if err != nil {
		return nil, fmt.Errorf("recipe %s: %w", r.Name(), err)
	}
	if c.EpochFromImage && res.NewestMTime > 0 {
		// Newc and 32-bit time fields end in 2106.
		c.Epoch = min(res.NewestMTime, 1<<32-1)
		c.progress("epoch %d: the image's newest mtime (SOURCE_DATE_EPOCH unset)", c.Epoch)
	}
	m := &manifest.Manifest{
		Tool:            "keel-rootfs",
		Artifact:        filepath.Base(c.Out),
		Kind:            c.Output,
		Recipe:          r.Name(),
		SourceDateEpoch: c.Epoch,
		Inputs:          res.Inputs,
		AgentVersion:    recipe.AgentVersion(ctx, c.Agent),
	}
	if c.ModulesDir != "" {
		mods, err := kmod.Resolve(c.ModulesDir, c.Modules)
		if err != nil {
			return nil, err
		}
		kver, err := kmod.Install(ctx, stage, c.ModulesDir, mods)
		if err != nil {
			return nil, err
		}
		m.KernelVersion = kver
		for _, mod := range mods {
			m.Modules = append(m.Modules, mod.Name)
		}
		c.progress("installed %d kernel modules for %s", len(mods), kver)
	}
	mpath := manifest.Path(c.Out)
	switch c.Output {
	case OutputDir:
		if err := image.ClampTimes(stage, c.Epoch); err != nil {
			return nil, err
		}
		if err := os.Rename(stage, c.Out); err != nil {
			return nil, fmt.Errorf("unable to move rootfs into %s: %w", c.Out, err)
		}
		if err := manifest.Write(c.Out, m); err != nil {
			os.RemoveAll(c.Out)
			return nil, err
		}
		return m, nil
	case OutputInitrd:
		comp := c.Compression
		if comp == "" {
			comp = cpio.Gzip
		}
		entries, err := cpio.TreeEntries(stage)
		if err != nil {
			return nil, err
		}
		// The kernel opens /dev/console before running /init; an initramfs
		// without it has no stdio.
		if !hasPath(entries, "dev/console") {
			entries = append(entries, cpio.CharDev("dev/console", 0o600, 5, 1))
		}
		c.progress("writing %s initrd", comp)
		if err := cpio.BuildInitrd(c.Out, entries, comp, cpio.Options{MTime: c.Epoch}); err != nil {
			return nil, err
		}
		m.Compression = string(comp)
	case OutputImage:
		ir, err := image.Build(ctx, stage, c.Out, image.Spec{FS: c.FS, Size: c.Size, DAX: c.DAX, DAXMode: c.DAXMode, Epoch: c.Epoch, Progress: c.Progress})
		if err != nil {
			return nil, err
		}
		m.FS = &manifest.FS{Type: string(c.FS), UUID: ir.UUID, Size: ir.FSSize, Offset: ir.FSOffset}
		if ir.PFN != nil {
			m.DAX = DAXInfo(ir.PFN)
		}
	}
	sum, size, err := manifest.FileDigest(c.Out)
	if err == nil {
		m.SHA256, m.Size = sum, size
		err = manifest.Write(c.Out, m)
	}
	if err != nil {
		os.Remove(c.Out)
		os.Remove(mpath)
		return nil, err
	}
	c.progress("wrote %s (%d MiB) and %s", c.Out, (m.Size+1<<20-1)>>20, filepath.Base(mpath))
	return m, nil
}

func hasPath(entries []cpio.Entry, p string) bool {
	for _, e := range entries {
		if strings.TrimPrefix(e.Path, "/") == p {
			return true
		}
	}
	return false
}

// DAXInfo converts an info block for the manifest.
func DAXInfo(b *pfn.InfoBlock) *manifest.DAX {
	return &manifest.DAX{
		InfoOffset: pfn.InfoOffset,
		DataOffset: b.DataOff,
		Align:      b.Align,
		Mode:       b.Mode.String(),
		NPFNs:      b.NPFNs,
		Version:    fmt.Sprintf("%d.%d", b.VersionMajor, b.VersionMinor),
		UUID:       FormatUUID(b.UUID),
	}
}

// FormatUUID renders 16 bytes in the canonical 8-4-4-4-12 form.
func FormatUUID(u [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}
