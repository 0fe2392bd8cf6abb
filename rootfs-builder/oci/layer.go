// Package oci unpacks container images (an OCI image layout directory, or
// a `docker save` tarball) into a root filesystem directory.
//
// Layer tars are untrusted input. Every write goes through an os.Root
// opened on the destination, so no entry, symlink or hard link can reach
// outside it; on top of that, entries whose names or link targets escape
// the root lexically are refused with an error rather than silently
// rewritten, so a hostile image fails loudly.
package oci

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// Whiteout markers from the OCI image spec (layer.md).
const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
)

// ErrUnsafePath marks entries refused because they would escape the root.
var ErrUnsafePath = errors.New("unsafe path in layer")

// CleanName turns a tar entry name into a path relative to the root.
// Leading "/" and "./" are dropped (common in layers); any ".." component
// is refused, as is a name that resolves to the root itself.
func CleanName(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("%w: %q contains NUL", ErrUnsafePath, name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: %q contains \"..\"", ErrUnsafePath, name)
		}
	}
	c := strings.TrimPrefix(path.Clean("/"+name), "/")
	if c == "" {
		return ".", nil
	}
	return c, nil
}

// CheckSymlink refuses a relative symlink target that climbs above the
// root when resolved from the link's directory. Absolute targets are kept:
// the guest kernel resolves them inside the guest's own root, and os.Root
// never follows them during extraction (Debian images rely on them, e.g.
// /etc/localtime -> /usr/share/zoneinfo/...).
func CheckSymlink(linkPath, target string) error {
	if target == "" || strings.IndexByte(target, 0) >= 0 {
		return fmt.Errorf("%w: symlink %s has an invalid target %q", ErrUnsafePath, linkPath, target)
	}
	if path.IsAbs(target) {
		return nil
	}
	depth := strings.Count(path.Dir(linkPath), "/") + 1
	if path.Dir(linkPath) == "." {
		depth = 0
	}
	for _, part := range strings.Split(target, "/") {
		switch part {
		case "", ".":
		case "..":
			depth--
			if depth < 0 {
				return fmt.Errorf("%w: symlink %s -> %s escapes the root", ErrUnsafePath, linkPath, target)
			}
		default:
			depth++
		}
	}
	return nil
}

// CheckHardlink cleans a hard link target, refusing absolute and escaping
// ones: a hard link must name a file of the same image.
func CheckHardlink(linkPath, target string) (string, error) {
	if path.IsAbs(target) {
		return "", fmt.Errorf("%w: hard link %s -> %s is absolute", ErrUnsafePath, linkPath, target)
	}
	c, err := CleanName(target)
	if err != nil {
		return "", fmt.Errorf("%w: hard link %s -> %s escapes the root", ErrUnsafePath, linkPath, target)
	}
	if c == "." {
		return "", fmt.Errorf("%w: hard link %s points at the root", ErrUnsafePath, linkPath)
	}
	return c, nil
}

// ApplyOptions tune layer application.
type ApplyOptions struct {
	// AllowDevices permits character/block device entries. They are only
	// ever created when the process is root; otherwise the layer is refused.
	AllowDevices bool
	// MaxFileSize bounds one file's (logical) size; 0 means
	// DefaultMaxFileSize. A sparse tar entry can claim exabytes in a few
	// bytes of input, so a bound is needed to fail instead of filling the disk.
	MaxFileSize int64
}

// DefaultMaxFileSize is the largest file a layer may contain by default.
const DefaultMaxFileSize = 16 << 30

// applier applies one layer to root.
type applier struct {
	root    *os.Root
	opts    ApplyOptions
	created map[string]bool // paths written by this layer (for opaque dirs)
	isRoot  bool
}

// ApplyLayer extracts one uncompressed layer tar into dir, honouring
// whiteouts. dir must exist.
func ApplyLayer(dir string, r io.Reader, opts ApplyOptions) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	a := &applier{root: root, opts: opts, created: map[string]bool{}, isRoot: os.Geteuid() == 0}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading layer: %w", err)
		}
		if err := a.apply(hdr, tr); err != nil {
			return fmt.Errorf("layer entry %q: %w", hdr.Name, err)
		}
	}
}

func (a *applier) apply(hdr *tar.Header, r io.Reader) error {
	name, err := CleanName(hdr.Name)
	if err != nil {
		return err
	}
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")
	if dir == "" {
		dir = "."
	}
	if base == opaqueMarker {
		return a.opaque(dir)
	}
	if strings.HasPrefix(base, whiteoutPrefix) {
		target := strings.TrimPrefix(base, whiteoutPrefix)
		if target == "" || target == "." || target == ".." {
			return fmt.Errorf("%w: whiteout names %q", ErrUnsafePath, target)
		}
		victim := path.Join(dir, target)
		if err := a.root.RemoveAll(victim); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	if name == "." {
		// The root directory's own metadata; the output dir keeps its own.
		return nil
	}
	if dir != "." {
		if err := a.root.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	// Mark the entry and its ancestors as this layer's, so an opaque marker
	// later in the same layer keeps them (and prunes lower-layer content
	// beside them).
	for p := name; p != "."; p = path.Dir(p) {
		a.created[p] = true
	}
	mode := hdr.FileInfo().Mode()
	existing, lerr := a.root.Lstat(name)
	if lerr == nil && !(existing.IsDir() && hdr.Typeflag == tar.TypeDir) {
		// Replace anything that is not a directory being re-declared.
		if err := a.root.RemoveAll(name); err != nil {
			return err
		}
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if lerr != nil || !existing.IsDir() {
			if err := a.root.Mkdir(name, 0o755); err != nil {
				return err
			}
		}
	case tar.TypeReg:
		limit := a.opts.MaxFileSize
		if limit <= 0 {
			limit = DefaultMaxFileSize
		}
		if hdr.Size < 0 || hdr.Size > limit {
			return fmt.Errorf("file size %d exceeds the %d-byte limit", hdr.Size, limit)
		}
		f, err := a.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			return err
		}
		n, err := io.CopyN(f, r, hdr.Size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		if n != hdr.Size {
			return fmt.Errorf("short file: %d of %d bytes", n, hdr.Size)
		}
	case tar.TypeSymlink:
		if err := CheckSymlink(name, hdr.Linkname); err != nil {
			return err
		}
		if err := a.root.Symlink(hdr.Linkname, name); err != nil {
			return err
		}
		return a.chown(name, hdr)
	case tar.TypeLink:
		target, err := CheckHardlink(name, hdr.Linkname)
		if err != nil {
			return err
		}
		st, err := a.root.Lstat(target)
		if err != nil {
			return fmt.Errorf("hard link target %s: %w", target, err)
		}
		if st.IsDir() {
			return fmt.Errorf("%w: hard link %s -> %s is a directory", ErrUnsafePath, name, target)
		}
		return a.root.Link(target, name)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if hdr.Typeflag != tar.TypeFifo && (!a.opts.AllowDevices || !a.isRoot) {
			return fmt.Errorf("device node (%d:%d) refused: only allowed when running as root", hdr.Devmajor, hdr.Devminor)
		}
		if err := a.mknod(name, hdr); err != nil {
			return err
		}
	case tar.TypeXGlobalHeader:
		return nil
	default:
		return fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
	}
	if err := a.chown(name, hdr); err != nil {
		return err
	}
	// Chmod after chown: chown clears setuid/setgid bits.
	return a.root.Chmod(name, mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
}

func (a *applier) chown(name string, hdr *tar.Header) error {
	if !a.isRoot {
		return nil
	}
	return a.root.Lchown(name, hdr.Uid, hdr.Gid)
}

// mknod creates a device or fifo through a directory fd obtained from the
// root, so the parent is resolved safely.
func (a *applier) mknod(name string, hdr *tar.Header) error {
	d, err := a.root.Open(path.Dir(name))
	if err != nil {
		return err
	}
	defer d.Close()
	var typ uint32
	switch hdr.Typeflag {
	case tar.TypeChar:
		typ = unix.S_IFCHR
	case tar.TypeBlock:
		typ = unix.S_IFBLK
	default:
		typ = unix.S_IFIFO
	}
	dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
	if err := unix.Mknodat(int(d.Fd()), path.Base(name), typ|0o600, int(dev)); err != nil {
		return fmt.Errorf("mknod %s: %w", name, err)
	}
	return nil
}

// opaque hides everything under dir that lower layers put there, keeping
// what this layer has already written.
func (a *applier) opaque(dir string) error {
	if err := a.root.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return a.prune(dir)
}

func (a *applier) prune(dir string) error {
	d, err := a.root.Open(dir)
	if err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		p := path.Join(dir, n)
		if !a.created[p] {
			if err := a.root.RemoveAll(p); err != nil {
				return err
			}
			continue
		}
		if st, err := a.root.Lstat(p); err == nil && st.IsDir() {
			if err := a.prune(p); err != nil {
				return err
			}
		}
	}
	return nil
}
