package copyfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Copier performs CopyFile requests under Root.
type Copier struct {
	// Root is the directory requests are confined to; empty means
	// DefaultRoot. It is created if missing.
	Root string

	// mu serialises requests: two chunks of one file racing on the same
	// temporary (or a chunk racing the final rename) would corrupt it, and
	// the host sends them one at a time anyway.
	mu sync.Mutex
}

func (c *Copier) root() string {
	if c.Root == "" {
		return DefaultRoot
	}
	return filepath.Clean(c.Root)
}

// beneath is the resolution every lookup uses: stay under the root
// descriptor, never through /proc magic links.
const beneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS

// Copy validates r and applies it.
func (c *Copier) Copy(r *Request) error {
	root := c.root()
	comps, k, err := validate(root, r)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fmt.Errorf("unable to create %s: %w", root, err)
	}
	rootfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("unable to open %s: %w", root, err)
	}
	defer unix.Close(rootfd)

	parent, err := mkdirs(rootfd, comps[:len(comps)-1], r.DirMode&0o7777)
	if err != nil {
		return err
	}
	defer unix.Close(parent)
	name := comps[len(comps)-1]
	switch k {
	case kindDir:
		return makeDir(parent, name, r)
	case kindSymlink:
		return makeSymlink(parent, name, r)
	}
	return writeChunk(parent, name, r)
}

// resolveErr turns openat2's refusal to leave the root into ErrEscape.
func resolveErr(op, rel string, err error) error {
	if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ELOOP) {
		return fmt.Errorf("%s %q: %w (%v)", op, rel, ErrEscape, err)
	}
	return fmt.Errorf("unable to %s %q: %w", op, rel, err)
}

// mkdirs opens (creating as needed, with mode) each directory of dirs below
// rootfd and returns an O_PATH descriptor of the last one. Every lookup
// starts again from the root with RESOLVE_BENEATH, so symlinks in existing
// components are followed only while they stay inside.
func mkdirs(rootfd int, dirs []string, mode uint32) (int, error) {
	cur, err := unix.Openat2(rootfd, ".", &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: beneath})
	if err != nil {
		return -1, fmt.Errorf("unable to open the root: %w", err)
	}
	for i := range dirs {
		rel := strings.Join(dirs[:i+1], "/")
		how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: beneath}
		fd, err := unix.Openat2(rootfd, rel, how)
		if errors.Is(err, unix.ENOENT) {
			// cur is the parent just resolved beneath the root.
			if err := unix.Mkdirat(cur, dirs[i], mode); err != nil && !errors.Is(err, unix.EEXIST) {
				unix.Close(cur)
				return -1, fmt.Errorf("unable to create directory %q: %w", rel, err)
			} else if err == nil {
				if err := fixMode(cur, dirs[i], mode); err != nil {
					unix.Close(cur)
					return -1, err
				}
			}
			fd, err = unix.Openat2(rootfd, rel, how)
		}
		unix.Close(cur)
		if err != nil {
			return -1, resolveErr("open directory", rel, err)
		}
		cur = fd
	}
	return cur, nil
}

// fixMode applies mode exactly (mkdirat is subject to the umask). The
// entry was just created by us in a directory resolved beneath the root.
func fixMode(dirfd int, name string, mode uint32) error {
	if err := unix.Fchmodat(dirfd, name, mode, 0); err != nil {
		return fmt.Errorf("unable to chmod %q: %w", name, err)
	}
	return nil
}

// openBelow opens name in dirfd without following any symlink.
func openBelow(dirfd int, name string, flags uint64, mode uint64) (int, error) {
	return unix.Openat2(dirfd, name, &unix.OpenHow{
		Flags: flags | unix.O_CLOEXEC | unix.O_NOFOLLOW, Mode: mode,
		Resolve: beneath | unix.RESOLVE_NO_SYMLINKS,
	})
}

func makeDir(parent int, name string, r *Request) error {
	perm := r.FileMode & 0o7777
	if err := unix.Mkdirat(parent, name, perm); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("unable to create directory %q: %w", r.Path, err)
	}
	fd, err := openBelow(parent, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return resolveErr("open directory", r.Path, err)
	}
	defer unix.Close(fd)
	return setAttrs(fd, r)
}

func setAttrs(fd int, r *Request) error {
	if err := unix.Fchmod(fd, r.FileMode&0o7777); err != nil {
		return fmt.Errorf("unable to chmod %q: %w", r.Path, err)
	}
	if err := unix.Fchown(fd, int(r.UID), int(r.GID)); err != nil {
		return fmt.Errorf("unable to chown %q: %w", r.Path, err)
	}
	return nil
}

func makeSymlink(parent int, name string, r *Request) error {
	// Replace an existing link or file, as Kata does; never a directory.
	if err := unix.Unlinkat(parent, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unable to replace %q: %w", r.Path, err)
	}
	if err := unix.Symlinkat(string(r.Data), parent, name); err != nil {
		return fmt.Errorf("unable to create symlink %q: %w", r.Path, err)
	}
	if err := unix.Fchownat(parent, name, int(r.UID), int(r.GID), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("unable to chown symlink %q: %w", r.Path, err)
	}
	return nil
}

// ErrHole is wrapped when a chunk starts past the data received so far.
var ErrHole = errors.New("chunk would leave a hole")

func writeChunk(parent int, name string, r *Request) error {
	tmp := name + TmpSuffix
	flags := uint64(unix.O_WRONLY | unix.O_CREAT)
	if r.Offset == 0 {
		flags |= unix.O_TRUNC // a new transfer
	}
	fd, err := openBelow(parent, tmp, flags, 0o600)
	if err != nil {
		return resolveErr("open", r.Path+TmpSuffix, err)
	}
	f := os.NewFile(uintptr(fd), r.Path+TmpSuffix)
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", f.Name())
	}
	if r.Offset > st.Size() {
		return &FieldError{Field: "offset", Err: ErrHole,
			Msg: fmt.Sprintf("%d: %v: only %d bytes received so far", r.Offset, ErrHole, st.Size())}
	}
	if _, err := f.WriteAt(r.Data, r.Offset); err != nil {
		return fmt.Errorf("unable to write %s: %w", f.Name(), err)
	}
	if r.Offset+int64(len(r.Data)) != r.FileSize {
		return nil
	}
	if err := f.Truncate(r.FileSize); err != nil {
		return fmt.Errorf("unable to truncate %s: %w", f.Name(), err)
	}
	if err := setAttrs(fd, r); err != nil {
		return err
	}
	if err := unix.Renameat(parent, tmp, parent, name); err != nil {
		return fmt.Errorf("unable to rename %s to %s: %w", f.Name(), r.Path, err)
	}
	return nil
}
