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
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keelvm/keel/rootfs-builder/internal/confine"
)

// Whiteout markers from the OCI image spec (layer.md).
const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	// whiteoutMetaPrefix starts aufs metadata names, never image content.
	whiteoutMetaPrefix = ".wh..wh."
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
	// MaxUnpackedSize bounds the logical bytes of all files of all layers
	// together; 0 means DefaultMaxUnpackedSize.
	MaxUnpackedSize int64
	// MaxFiles bounds the entries created by all layers together; 0 means
	// DefaultMaxFiles.
	MaxFiles int64
	// KeepSELinux applies security.selinux xattrs from the layers. They
	// are dropped by default: labels from the image's build host rarely
	// match the guest's policy.
	KeepSELinux bool
}

// Limits on what an image may unpack to. Errors name the option so a
// genuinely large image can raise it (keel-rootfs --max-unpacked-size,
// --max-files).
const (
	DefaultMaxFileSize     = 16 << 30
	DefaultMaxUnpackedSize = 16 << 30
	DefaultMaxFiles        = 1 << 20
)

// ErrLimit marks a layer refused for exceeding a size or count limit.
var ErrLimit = errors.New("image exceeds a limit")

// budget is what the layers of one image have used so far.
type budget struct {
	bytes, files int64
	newest       int64 // newest entry mtime, Unix seconds
}

// applier applies one layer to root.
type applier struct {
	root    *os.Root
	opts    ApplyOptions
	created map[string]bool // paths written by this layer (for opaque dirs)
	isRoot  bool
	used    *budget
	// dirTimes are directory mtimes from the layers, applied once all
	// entries are in (adding an entry changes its directory's mtime).
	dirTimes map[string]time.Time
}

// ApplyLayer extracts one uncompressed layer tar into dir, honouring
// whiteouts. dir must exist.
func ApplyLayer(dir string, r io.Reader, opts ApplyOptions) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	a := newApplier(root, opts, &budget{}, map[string]time.Time{})
	if err := a.applyTar(r); err != nil {
		return err
	}
	return restoreDirTimes(root, a.dirTimes)
}

func newApplier(root *os.Root, opts ApplyOptions, used *budget, dirTimes map[string]time.Time) *applier {
	if opts.MaxFileSize <= 0 {
		opts.MaxFileSize = DefaultMaxFileSize
	}
	if opts.MaxUnpackedSize <= 0 {
		opts.MaxUnpackedSize = DefaultMaxUnpackedSize
	}
	if opts.MaxFiles <= 0 {
		opts.MaxFiles = DefaultMaxFiles
	}
	return &applier{root: root, opts: opts, created: map[string]bool{}, isRoot: os.Geteuid() == 0, used: used, dirTimes: dirTimes}
}

func (a *applier) applyTar(r io.Reader) error {
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
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
	}
}

// restoreDirTimes sets the recorded directory mtimes, deepest first.
func restoreDirTimes(root *os.Root, times map[string]time.Time) error {
	names := make([]string, 0, len(times))
	for n := range times {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return names[i] > names[j] })
	for _, n := range names {
		st, err := root.Lstat(n)
		if err != nil || !st.IsDir() {
			continue // removed or replaced by a later layer
		}
		if err := confine.Lutimes(root, n, times[n], times[n]); err != nil {
			return err
		}
	}
	return nil
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
	if strings.HasPrefix(name, whiteoutMetaPrefix) || strings.HasPrefix(base, whiteoutMetaPrefix) {
		// aufs metadata (.wh..wh.plnk, .wh..wh.aufs) in old docker layers:
		// not content, skipped as Docker does.
		return nil
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
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	if name == "." {
		// The root directory's own metadata; the output dir keeps its own.
		return nil
	}
	a.used.files++
	a.used.newest = max(a.used.newest, hdr.ModTime.Unix())
	if a.used.files > a.opts.MaxFiles {
		return fmt.Errorf("%w: more than %d entries (raise --max-files)", ErrLimit, a.opts.MaxFiles)
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
		if err := a.writeFile(name, hdr, r); err != nil {
			return err
		}
	case tar.TypeSymlink:
		if err := CheckSymlink(name, hdr.Linkname); err != nil {
			return err
		}
		if err := a.root.Symlink(hdr.Linkname, name); err != nil {
			return err
		}
		if err := a.chown(name, hdr); err != nil {
			return err
		}
		if err := a.xattrs(name, hdr); err != nil {
			return err
		}
		return confine.Lutimes(a.root, name, hdr.ModTime, hdr.ModTime)
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
		// The inode (owner, mode, xattrs, times) is the target's.
		return a.root.Link(target, name)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if hdr.Typeflag != tar.TypeFifo && (!a.opts.AllowDevices || !a.isRoot) {
			return fmt.Errorf("device node (%d:%d) refused: only allowed when running as root", hdr.Devmajor, hdr.Devminor)
		}
		if err := a.mknod(name, hdr); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
	}
	if err := a.chown(name, hdr); err != nil {
		return err
	}
	// Chmod after chown: chown clears setuid/setgid bits.
	if err := a.root.Chmod(name, mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
		return err
	}
	// xattrs after chown too: chown drops security.capability.
	if err := a.xattrs(name, hdr); err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeDir {
		a.dirTimes[name] = hdr.ModTime
		return nil
	}
	return confine.Lutimes(a.root, name, hdr.ModTime, hdr.ModTime)
}

// writeFile creates a regular file, within the size limits, leaving holes
// where the entry has runs of zero blocks (sparse entries read as zeros),
// so a sparse layer is unpacked sparse.
func (a *applier) writeFile(name string, hdr *tar.Header, r io.Reader) error {
	if hdr.Size < 0 || hdr.Size > a.opts.MaxFileSize {
		return fmt.Errorf("%w: file size %d exceeds the %d-byte per-file limit", ErrLimit, hdr.Size, a.opts.MaxFileSize)
	}
	a.used.bytes += hdr.Size
	if a.used.bytes > a.opts.MaxUnpackedSize {
		return fmt.Errorf("%w: unpacked size exceeds the %d-byte limit (raise --max-unpacked-size)", ErrLimit, a.opts.MaxUnpackedSize)
	}
	f, err := a.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	n, err := copySparse(f, io.LimitReader(r, hdr.Size))
	if err == nil && n == hdr.Size {
		err = f.Truncate(n) // materialise a trailing hole
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if n != hdr.Size {
		return fmt.Errorf("short file: %d of %d bytes", n, hdr.Size)
	}
	return nil
}

const holeBlock = 4096

// copySparse copies r to f, seeking over whole zero blocks instead of
// writing them. f must be empty; the caller truncates to the final size.
func copySparse(f *os.File, r io.Reader) (int64, error) {
	buf := make([]byte, 64<<10)
	var total int64
	for {
		n, err := io.ReadFull(r, buf)
		for off := 0; off < n; off += holeBlock {
			end := min(off+holeBlock, n)
			blk := buf[off:end]
			if isZero(blk) {
				if _, serr := f.Seek(int64(len(blk)), io.SeekCurrent); serr != nil {
					return total, serr
				}
			} else if _, werr := f.Write(blk); werr != nil {
				return total, werr
			}
			total += int64(len(blk))
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// xattrPrefix is how PAX records carry extended attributes (GNU tar, bsdtar,
// Docker, buildah and umoci all write it).
const xattrPrefix = "SCHILY.xattr."

// xattrs applies the entry's PAX xattr records, in name order.
func (a *applier) xattrs(name string, hdr *tar.Header) error {
	var keys []string
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, xattrPrefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		attr := strings.TrimPrefix(k, xattrPrefix)
		if attr == "security.selinux" && !a.opts.KeepSELinux {
			continue
		}
		if err := confine.Lsetxattr(a.root, name, attr, []byte(hdr.PAXRecords[k])); err != nil {
			return err
		}
	}
	return nil
}

func (a *applier) chown(name string, hdr *tar.Header) error {
	if !a.isRoot {
		return nil
	}
	return a.root.Lchown(name, hdr.Uid, hdr.Gid)
}

// mknod creates a device or fifo with its parent resolved inside the root.
func (a *applier) mknod(name string, hdr *tar.Header) error {
	var typ uint32
	switch hdr.Typeflag {
	case tar.TypeChar:
		typ = unix.S_IFCHR
	case tar.TypeBlock:
		typ = unix.S_IFBLK
	default:
		typ = unix.S_IFIFO
	}
	return confine.Mknod(a.root, name, typ|0o600, unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))
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
