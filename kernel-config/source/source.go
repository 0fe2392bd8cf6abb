// Package source provides an extracted Linux source tree from Debian's
// linux-source-<series> package, cached outside the checkout.
//
// The package ships one tarball, /usr/src/<package>.tar.xz. Extraction
// (about 10-15 s, 1.5 GB) happens once per package version into
// <cache>/<version>/, atomically: into a temporary directory, then a rename,
// under an flock so that concurrent callers wait instead of racing.
package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// DefaultPackage is the Debian package Keel builds its guest kernel from.
const DefaultPackage = "linux-source-6.1"

// DefaultCache is where trees are extracted.
const DefaultCache = "/var/cache/keel/linux-source"

// ErrNotInstalled means dpkg does not know the package as installed.
var ErrNotInstalled = errors.New("package not installed")

// Tree is an extracted kernel source tree.
type Tree struct {
	Dir     string // top of the tree (has Makefile, Kconfig)
	Package string // Debian package, "" for a user-supplied directory
	Version string // Debian package version or the kernel version of a directory
}

// InstalledVersion asks dpkg for the installed version of pkg.
func InstalledVersion(ctx context.Context, pkg string) (string, error) {
	out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${Status}\t${Version}", pkg).Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w", pkg, ErrNotInstalled)
	}
	status, version, _ := strings.Cut(string(out), "\t")
	if !strings.HasSuffix(status, " installed") || version == "" {
		return "", fmt.Errorf("%s (status %q): %w", pkg, status, ErrNotInstalled)
	}
	return version, nil
}

// Install runs apt-get install -y pkg, with apt-get update when the first
// attempt cannot find the package (fresh machines have empty lists).
func Install(ctx context.Context, pkg string, log io.Writer) error {
	install := func() error {
		cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "-q", "--no-install-recommends", pkg)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = log, log
		return cmd.Run()
	}
	if install() == nil {
		return nil
	}
	upd := exec.CommandContext(ctx, "apt-get", "update", "-q")
	upd.Stdout, upd.Stderr = log, log
	if err := upd.Run(); err != nil {
		return fmt.Errorf("apt-get update: %w", err)
	}
	if err := install(); err != nil {
		return fmt.Errorf("apt-get install %s: %w", pkg, err)
	}
	return nil
}

// Ensure installs pkg if needed and returns its tree extracted under cache.
func Ensure(ctx context.Context, pkg, cache string, log io.Writer) (*Tree, error) {
	version, err := InstalledVersion(ctx, pkg)
	if errors.Is(err, ErrNotInstalled) {
		fmt.Fprintf(log, "source: installing %s with apt-get\n", pkg)
		if err := Install(ctx, pkg, log); err != nil {
			return nil, err
		}
		version, err = InstalledVersion(ctx, pkg)
	}
	if err != nil {
		return nil, err
	}
	tarball := filepath.Join("/usr/src", pkg+".tar.xz")
	dir, err := Extract(ctx, tarball, filepath.Join(cache, version), log)
	if err != nil {
		return nil, err
	}
	return &Tree{Dir: dir, Package: pkg, Version: version}, nil
}

// Extract unpacks tarball (top directory stripped) into dest unless dest
// exists already. It holds dest+".lock" while working and removes leftovers
// of interrupted runs.
func Extract(ctx context.Context, tarball, dest string, log io.Writer) (string, error) {
	if done(dest) {
		return dest, nil
	}
	if _, err := os.Stat(tarball); err != nil {
		return "", fmt.Errorf("kernel source tarball: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
		return "", err
	}
	unlock, err := Lock(dest + ".lock")
	if err != nil {
		return "", err
	}
	defer unlock()
	if done(dest) { // another process finished while we waited
		return dest, nil
	}
	tmp := dest + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", err
	}
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return "", err
	}
	fmt.Fprintf(log, "source: extracting %s into %s\n", tarball, dest)
	cmd := exec.CommandContext(ctx, "tar", "-xJf", tarball, "-C", tmp, "--strip-components=1")
	cmd.Stderr = log
	if err := cmd.Run(); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("extract %s: %w", tarball, err)
	}
	if !done(tmp) {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("extract %s: no Makefile and Kconfig at the top of the archive", tarball)
	}
	if err := os.Rename(tmp, dest); err != nil {
		return "", err
	}
	return dest, nil
}

func done(dir string) bool {
	for _, f := range []string{"Makefile", "Kconfig"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return false
		}
	}
	return true
}

// FromDir describes a user-supplied tree, reading its version from the
// top-level Makefile.
func FromDir(dir string) (*Tree, error) {
	if !done(dir) {
		return nil, fmt.Errorf("%s: not a kernel source tree (no Makefile and Kconfig)", dir)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, "Makefile"))
	if err != nil {
		return nil, err
	}
	vars := map[string]string{}
	for _, l := range strings.SplitN(string(b), "\n", 20) {
		if k, v, ok := strings.Cut(l, "="); ok {
			vars[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	v := vars["VERSION"] + "." + vars["PATCHLEVEL"] + "." + vars["SUBLEVEL"] + vars["EXTRAVERSION"]
	return &Tree{Dir: abs, Version: v}, nil
}

// Lock takes an exclusive flock on path, creating it, and returns the
// release function. It blocks while another process holds the lock.
func Lock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
