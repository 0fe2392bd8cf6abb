// Package guestkernel provides the Linux kernel that Keel's VM tests boot:
// Debian 12's stock kernel package (the one linux-image-amd64 depends on),
// fetched with apt-get download, unpacked with dpkg-deb into a cache shared
// by every test process on the machine, and reused on later runs.
//
// The cache lives in /var/cache/keel/debian-kernel/<package version>/
// (override with $KEEL_KERNEL_CACHE). Each version directory is created by
// unpacking into a temporary sibling and renaming it into place under an
// flock, so concurrent `go test` processes never see half a kernel.
//
// Debian's package carries no modules.dep (its postinst runs depmod), so the
// unpacked tree gets one generated from each module's .modinfo section; see
// ModulesFor and InstallModules for building an initramfs module set.
package guestkernel

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// DefaultCacheRoot is where unpacked kernels are kept unless
// $KEEL_KERNEL_CACHE names another directory.
const DefaultCacheRoot = "/var/cache/keel/debian-kernel"

// MetaPackage is the Debian package whose dependency names the current
// kernel image package.
const MetaPackage = "linux-image-amd64"

// markerName is written into a version directory last before it is renamed
// into place; its presence means the directory is complete.
const markerName = "keel-kernel.json"

// Kernel is an unpacked Debian kernel package.
type Kernel struct {
	// Version is the kernel release, e.g. "6.1.0-56-amd64" (uname -r).
	Version string
	// Package and PackageVersion name the Debian package it came from,
	// e.g. "linux-image-6.1.0-56-amd64" and "6.1.192-2".
	Package        string
	PackageVersion string
	// VmlinuzPath is the bzImage to pass to QEMU's -kernel.
	VmlinuzPath string
	// ModulesDir is .../lib/modules/<Version>, holding modules.dep.
	ModulesDir string
}

// marker is the JSON stored as markerName.
type marker struct {
	Version        string `json:"version"`
	Package        string `json:"package"`
	PackageVersion string `json:"package_version"`
}

// CacheRoot returns the cache directory Ensure uses.
func CacheRoot() string {
	if d := os.Getenv("KEEL_KERNEL_CACHE"); d != "" {
		return d
	}
	return DefaultCacheRoot
}

// Ensure returns the current Debian kernel from the cache in CacheRoot,
// downloading and unpacking it first if needed.
func Ensure(ctx context.Context) (*Kernel, error) {
	return EnsureIn(ctx, CacheRoot())
}

// EnsureIn is Ensure with an explicit cache root.
//
// The candidate version comes from the local apt lists; apt-get update is run
// only when resolving or downloading fails. If apt cannot deliver the
// candidate at all but an older kernel is cached, that one is returned, so
// tests still run offline.
func EnsureIn(ctx context.Context, root string) (*Kernel, error) {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("unable to create kernel cache: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(root, ".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()

	// apt-cache rebuilds its cache on every run here (seconds under load),
	// so a recent resolution is trusted for ResolveTTL.
	if k, err := recentResolution(root); err == nil {
		return k, nil
	}
	k, err := ensureLocked(ctx, root)
	if err == nil {
		if err := saveResolution(root, k); err != nil {
			return nil, err
		}
		return k, nil
	}
	if ctx.Err() != nil {
		return nil, err
	}
	if cached, cerr := newestCached(root); cerr == nil {
		return cached, nil
	}
	return nil, err
}

func ensureLocked(ctx context.Context, root string) (*Kernel, error) {
	pkg, ver, err := resolveCandidate(ctx)
	if err != nil {
		// Stale or missing apt lists: refresh once and retry.
		if uerr := aptUpdate(ctx); uerr != nil {
			return nil, fmt.Errorf("%w (apt-get update: %v)", err, uerr)
		}
		if pkg, ver, err = resolveCandidate(ctx); err != nil {
			return nil, err
		}
	}
	dir := filepath.Join(root, ver)
	if k, err := Load(dir); err == nil {
		return k, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		// A directory without a valid marker cannot come from us (we
		// rename only complete trees); clear it rather than trust it.
		if rerr := os.RemoveAll(dir); rerr != nil {
			return nil, fmt.Errorf("unable to remove broken cache %s: %w", dir, rerr)
		}
	}

	work, err := os.MkdirTemp(root, ".fetch-")
	if err != nil {
		return nil, fmt.Errorf("unable to create temp dir: %w", err)
	}
	defer os.RemoveAll(work)

	deb, err := download(ctx, work, pkg, ver)
	if err != nil {
		if uerr := aptUpdate(ctx); uerr != nil {
			return nil, fmt.Errorf("%w (apt-get update: %v)", err, uerr)
		}
		// The update may have moved the candidate on.
		if pkg, ver, err = resolveCandidate(ctx); err != nil {
			return nil, err
		}
		dir = filepath.Join(root, ver)
		if k, err := Load(dir); err == nil {
			return k, nil
		}
		if deb, err = download(ctx, work, pkg, ver); err != nil {
			return nil, err
		}
	}

	tree := filepath.Join(work, "tree")
	if err := run(ctx, "", "dpkg-deb", "-x", deb, tree); err != nil {
		return nil, err
	}
	if err := os.Remove(deb); err != nil {
		return nil, err
	}
	m, err := finishTree(tree, pkg, ver)
	if err != nil {
		return nil, err
	}
	if err := os.Rename(tree, dir); err != nil {
		return nil, fmt.Errorf("unable to move kernel into cache: %w", err)
	}
	return fromMarker(dir, m), nil
}

// finishTree checks an unpacked package, adds modules.dep when the package
// has none, and writes the completion marker.
func finishTree(tree, pkg, ver string) (marker, error) {
	mods, err := filepath.Glob(filepath.Join(tree, "lib/modules/*"))
	if err != nil || len(mods) != 1 {
		return marker{}, fmt.Errorf("package %s_%s: expected one lib/modules/<version>, found %d", pkg, ver, len(mods))
	}
	m := marker{Version: filepath.Base(mods[0]), Package: pkg, PackageVersion: ver}
	if _, err := os.Stat(filepath.Join(tree, "boot", "vmlinuz-"+m.Version)); err != nil {
		return marker{}, fmt.Errorf("package %s_%s has no vmlinuz: %w", pkg, ver, err)
	}
	dep := filepath.Join(mods[0], "modules.dep")
	if _, err := os.Stat(dep); errors.Is(err, os.ErrNotExist) {
		if err := GenerateModulesDep(mods[0]); err != nil {
			return marker{}, err
		}
	} else if err != nil {
		return marker{}, err
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return marker{}, err
	}
	if err := os.WriteFile(filepath.Join(tree, markerName), append(b, '\n'), 0o644); err != nil {
		return marker{}, err
	}
	return m, nil
}

// Load returns the kernel unpacked in dir (one version directory of the
// cache). The error wraps os.ErrNotExist when dir holds no finished kernel.
func Load(dir string) (*Kernel, error) {
	b, err := os.ReadFile(filepath.Join(dir, markerName))
	if err != nil {
		return nil, fmt.Errorf("no cached kernel in %s: %w", dir, err)
	}
	var m marker
	if err := json.Unmarshal(b, &m); err != nil || m.Version == "" || strings.ContainsAny(m.Version, "/\x00") {
		return nil, fmt.Errorf("corrupt kernel marker in %s", dir)
	}
	k := fromMarker(dir, m)
	for _, p := range []string{k.VmlinuzPath, filepath.Join(k.ModulesDir, "modules.dep")} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("cached kernel in %s is incomplete: %v", dir, err)
		}
	}
	return k, nil
}

func fromMarker(dir string, m marker) *Kernel {
	return &Kernel{
		Version:        m.Version,
		Package:        m.Package,
		PackageVersion: m.PackageVersion,
		VmlinuzPath:    filepath.Join(dir, "boot", "vmlinuz-"+m.Version),
		ModulesDir:     filepath.Join(dir, "lib", "modules", m.Version),
	}
}

// newestCached returns the most recently unpacked kernel under root.
func newestCached(root string) (*Kernel, error) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	type cand struct {
		k     *Kernel
		mtime int64
	}
	var cs []cand
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		dir := filepath.Join(root, e.Name())
		k, err := Load(dir)
		if err != nil {
			continue
		}
		st, err := os.Stat(filepath.Join(dir, markerName))
		if err != nil {
			continue
		}
		cs = append(cs, cand{k, st.ModTime().UnixNano()})
	}
	if len(cs) == 0 {
		return nil, fmt.Errorf("no cached kernel in %s: %w", root, os.ErrNotExist)
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].mtime > cs[j].mtime })
	return cs[0].k, nil
}

// ResolveTTL is how long the candidate version found through apt is reused
// without asking apt again. Newer kernel updates are picked up after that.
const ResolveTTL = 24 * time.Hour

// resolvedName records the last resolution: the version directory name.
const resolvedName = ".resolved"

func recentResolution(root string) (*Kernel, error) {
	p := filepath.Join(root, resolvedName)
	st, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if age := time.Since(st.ModTime()); age < 0 || age > ResolveTTL {
		return nil, fmt.Errorf("resolution is %v old", age)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	name := strings.TrimSpace(string(b))
	if name == "" || name != filepath.Base(name) || strings.HasPrefix(name, ".") {
		return nil, fmt.Errorf("bad %s", p)
	}
	return Load(filepath.Join(root, name))
}

func saveResolution(root string, k *Kernel) error {
	tmp := filepath.Join(root, resolvedName+".tmp")
	if err := os.WriteFile(tmp, []byte(k.PackageVersion+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(root, resolvedName))
}

// dependsRE matches the metapackage's dependency on the versioned image
// package, e.g. "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)".
var dependsRE = regexp.MustCompile(`(?m)^Depends:.*?\b(linux-image-[0-9][^ ,]*-amd64) \(= ([^)\s]+)\)`)

// resolveCandidate asks the local apt lists which image package and version
// MetaPackage currently depends on.
func resolveCandidate(ctx context.Context) (pkg, ver string, err error) {
	out, err := output(ctx, "apt-cache", "show", "--no-all-versions", MetaPackage)
	if err != nil {
		return "", "", err
	}
	return parseDepends(out)
}

func parseDepends(control []byte) (pkg, ver string, err error) {
	m := dependsRE.FindSubmatch(control)
	if m == nil {
		return "", "", fmt.Errorf("%s: no versioned linux-image dependency in apt metadata", MetaPackage)
	}
	return string(m[1]), string(m[2]), nil
}

func aptUpdate(ctx context.Context) error {
	return run(ctx, "", "apt-get", "update", "-q")
}

// download fetches pkg=ver into dir and returns the .deb path.
func download(ctx context.Context, dir, pkg, ver string) (string, error) {
	if err := run(ctx, dir, "apt-get", "download", "-q", pkg+"="+ver); err != nil {
		return "", err
	}
	debs, err := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
	if err != nil || len(debs) != 1 {
		return "", fmt.Errorf("apt-get download %s=%s produced %d .deb files", pkg, ver, len(debs))
	}
	return debs[0], nil
}

func run(ctx context.Context, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func output(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}
