package copyfile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/keelvm/keel/agent/errdefs"

	"golang.org/x/sys/unix"
)

// Copier performs CopyFile requests under Root.
type Copier struct {
	// Root is the directory requests are confined to; empty means
	// DefaultRoot. It is created if missing.
	Root string

	// locks serialises requests for one path: two chunks of one file racing
	// on the same temporary (or a chunk racing the final rename) would
	// corrupt it. Requests for other paths do not wait, and a waiter gives
	// up when its context ends.
	locks pathLocks
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
func (c *Copier) Copy(ctx context.Context, r *Request) error {
	root := c.root()
	comps, k, err := validate(root, r)
	if err != nil {
		var fe *FieldError
		if t := r.FileMode & unix.S_IFMT; errors.As(err, &fe) && fe.Field != "path" && (t == 0 || t == unix.S_IFREG) {
			// A bad chunk ends the transfer it belongs to.
			if comps, perr := ValidatePath(root, r.Path); perr == nil {
				c.abandon(ctx, root, r.Path, comps)
			}
		}
		return err
	}
	unlock, err := c.locks.lock(ctx, r.Path)
	if err != nil {
		return fmt.Errorf("unable to copy %q: %w", r.Path, err)
	}
	defer unlock()
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fmt.Errorf("unable to create %s: %w", root, err)
	}
	rootfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("unable to open %s: %w", root, err)
	}
	defer unix.Close(rootfd)

	perm, _ := DirPerm(r.DirMode) // validated
	parent, err := mkdirs(rootfd, comps[:len(comps)-1], perm)
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

// abandon removes the temporary of a transfer whose chunk was refused,
// without creating anything on the way.
func (c *Copier) abandon(ctx context.Context, root, path string, comps []string) {
	unlock, err := c.locks.lock(ctx, path)
	if err != nil {
		return
	}
	defer unlock()
	rootfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(rootfd)
	dir := "."
	if len(comps) > 1 {
		dir = strings.Join(comps[:len(comps)-1], "/")
	}
	parent, err := unix.Openat2(rootfd, dir, &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: beneath})
	if err != nil {
		return
	}
	defer unix.Close(parent)
	removeTmp(parent, comps[len(comps)-1]+TmpSuffix)
}

// resolveErr names why openat2 refused: a symlink leading out (or, with
// RESOLVE_NO_SYMLINKS, any symlink) is ErrEscape, a component of the wrong
// type is ErrInTheWay.
func resolveErr(op, rel string, err error) error {
	switch {
	case errors.Is(err, unix.EXDEV), errors.Is(err, unix.ELOOP):
		return fmt.Errorf("%s %q: %w (%v)", op, rel, ErrEscape, err)
	case errors.Is(err, unix.ENOTDIR):
		return fmt.Errorf("%s %q: %w: a component is not a directory (%v)", op, rel, ErrInTheWay, err)
	}
	return fmt.Errorf("unable to %s %q: %w", op, rel, err)
}

// mkdirs opens (creating as needed, with mode) each directory of dirs below
// rootfd and returns an O_PATH descriptor of the last one. Every lookup
// starts again from the root with RESOLVE_BENEATH, so symlinks in existing
// components are followed only while they stay inside. O_PATH opens never
// block, whatever the entry is.
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
			var st unix.Stat_t
			if errors.Is(err, unix.ENOENT) && unix.Fstatat(cur, dirs[i], &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
				err = fmt.Errorf("a dangling %s: %w", typeName(st.Mode)[2:], unix.ENOTDIR)
			}
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

// typeName names a file type for errors.
func typeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFLNK:
		return "a symlink"
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	}
	return fmt.Sprintf("of type %#o", mode&unix.S_IFMT)
}

// inTheWay reports an entry of the wrong type at path.
func inTheWay(path string, mode uint32, want string) error {
	return fmt.Errorf("%q is %s, not %s: %w", path, typeName(mode), want, ErrInTheWay)
}

func makeDir(parent int, name string, r *Request) error {
	if err := unix.Mkdirat(parent, name, r.FileMode&0o777); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("unable to create directory %q: %w", r.Path, err)
	}
	// O_DIRECTORY fails with ENOTDIR before anything else is opened, so a
	// FIFO or device node in the way is never opened; a symlink fails with
	// ELOOP (RESOLVE_NO_SYMLINKS).
	fd, err := openBelow(parent, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		var st unix.Stat_t
		if serr := unix.Fstatat(parent, name, &st, unix.AT_SYMLINK_NOFOLLOW); serr == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return inTheWay(r.Path, st.Mode, "a directory")
		}
		return resolveErr("open directory", r.Path, err)
	}
	defer unix.Close(fd)
	return setAttrs(fd, r)
}

// setAttrs chowns, then chmods: chown(2) clears setuid and setgid, so the
// mode goes last for them to survive.
func setAttrs(fd int, r *Request) error {
	if err := unix.Fchown(fd, int(r.UID), int(r.GID)); err != nil {
		return fmt.Errorf("unable to chown %q: %w", r.Path, err)
	}
	if err := unix.Fchmod(fd, r.FileMode&0o7777); err != nil {
		return fmt.Errorf("unable to chmod %q: %w", r.Path, err)
	}
	return nil
}

func makeSymlink(parent int, name string, r *Request) error {
	// Replace an existing link or file, as Kata does; never a directory.
	// Unlinking never opens the entry, whatever it is.
	if err := unix.Unlinkat(parent, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		if errors.Is(err, unix.EISDIR) {
			return inTheWay(r.Path, unix.S_IFDIR, "a symlink or file to replace")
		}
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
var ErrHole = errdefs.New(errdefs.ErrFailedPrecondition, "chunk would leave a hole")

// checkTarget refuses to replace anything but a regular file (or nothing)
// at the destination. rename(2) would not follow or open it, but a FIFO,
// device or symlink there was not put by the host, and a directory cannot
// be replaced by a file.
func checkTarget(parent int, name, path string) error {
	var st unix.Stat_t
	err := unix.Fstatat(parent, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil
	case err != nil:
		return fmt.Errorf("unable to stat %q: %w", path, err)
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return inTheWay(path, st.Mode, "a regular file")
	}
	return nil
}

func writeChunk(parent int, name string, r *Request) (retErr error) {
	tmp := name + TmpSuffix
	tmpPath := r.Path + TmpSuffix
	defer func() {
		// A failed chunk ends the transfer: the host starts again at 0.
		// Only a regular file is removed; anything else was refused
		// untouched.
		if retErr != nil {
			removeTmp(parent, tmp)
		}
	}()
	if err := checkTarget(parent, name, r.Path); err != nil {
		return err
	}
	var f *os.File
	var err error
	if r.Offset == 0 {
		f, err = createTmp(parent, tmp, tmpPath)
	} else {
		f, err = reopenTmp(parent, tmp, tmpPath, r.Offset)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("unable to stat %s: %w", tmpPath, err)
	}
	if !st.Mode().IsRegular() { // cannot happen: created or checked above
		return fmt.Errorf("%q is not a regular file: %w", tmpPath, ErrInTheWay)
	}
	if r.Offset > st.Size() {
		return &FieldError{Field: "offset", Err: ErrHole,
			Msg: fmt.Sprintf("%d: %v: only %d bytes received so far", r.Offset, ErrHole, st.Size())}
	}
	if _, err := f.WriteAt(r.Data, r.Offset); err != nil {
		return fmt.Errorf("unable to write %s: %w", tmpPath, err)
	}
	if r.Offset+int64(len(r.Data)) != r.FileSize {
		return nil
	}
	if err := f.Truncate(r.FileSize); err != nil {
		return fmt.Errorf("unable to truncate %s: %w", tmpPath, err)
	}
	if err := setAttrs(int(f.Fd()), r); err != nil {
		return err
	}
	if err := checkTarget(parent, name, r.Path); err != nil { // planted meanwhile
		return err
	}
	if err := unix.Renameat(parent, tmp, parent, name); err != nil {
		return fmt.Errorf("unable to rename %s to %s: %w", tmpPath, r.Path, err)
	}
	return nil
}

// tmpFlags never block on open: O_NONBLOCK for a FIFO or device, O_NOCTTY
// for a tty. They are a second line: the entry is known to be a regular
// file (created with O_EXCL, or checked with fstat) before it is opened.
const tmpFlags = unix.O_WRONLY | unix.O_NONBLOCK | unix.O_NOCTTY

// createTmp starts a transfer: it creates the temporary with O_EXCL, so an
// existing entry is never opened. A stale regular temporary (an abandoned
// transfer) is removed first; anything else there is refused.
func createTmp(parent int, tmp, tmpPath string) (*os.File, error) {
	for attempt := 0; ; attempt++ {
		fd, err := openBelow(parent, tmp, tmpFlags|unix.O_CREAT|unix.O_EXCL, 0o600)
		if err == nil {
			return os.NewFile(uintptr(fd), tmpPath), nil
		}
		if !errors.Is(err, unix.EEXIST) || attempt > 0 {
			return nil, resolveErr("create", tmpPath, err)
		}
		var st unix.Stat_t
		if err := unix.Fstatat(parent, tmp, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil && !errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("unable to stat %s: %w", tmpPath, err)
		} else if err == nil && st.Mode&unix.S_IFMT != unix.S_IFREG {
			return nil, inTheWay(tmpPath, st.Mode, "a regular file")
		}
		if err := unix.Unlinkat(parent, tmp, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("unable to remove stale %s: %w", tmpPath, err)
		}
	}
}

// reopenTmp continues a transfer. The temporary is opened O_PATH (which
// never opens the file itself), checked to be a regular file, then reopened
// for writing through its descriptor, so the inode written is the inode
// checked.
func reopenTmp(parent int, tmp, tmpPath string, offset int64) (*os.File, error) {
	pfd, err := openBelow(parent, tmp, unix.O_PATH, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, &FieldError{Field: "offset", Err: ErrHole,
			Msg: fmt.Sprintf("%d: %v: no transfer in progress (start at offset 0)", offset, ErrHole)}
	case errors.Is(err, unix.ELOOP): // the parent is resolved: tmp itself is a symlink
		return nil, inTheWay(tmpPath, unix.S_IFLNK, "a regular file")
	case err != nil:
		return nil, resolveErr("open", tmpPath, err)
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return nil, fmt.Errorf("unable to stat %s: %w", tmpPath, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, inTheWay(tmpPath, st.Mode, "a regular file")
	}
	fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", pfd), tmpFlags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("unable to reopen %s: %w", tmpPath, err)
	}
	return os.NewFile(uintptr(fd), tmpPath), nil
}

// removeTmp unlinks the temporary if it is a regular file.
func removeTmp(parent int, tmp string) {
	var st unix.Stat_t
	if unix.Fstatat(parent, tmp, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
		_ = unix.Unlinkat(parent, tmp, 0)
	}
}

// pathLocks is a mutex per path whose waiters honour their context.
type pathLocks struct {
	mu sync.Mutex
	m  map[string]*pathLock
}

type pathLock struct {
	ch   chan struct{} // holds one token while locked
	refs int           // holders and waiters; the entry goes at zero
}

func (l *pathLocks) lock(ctx context.Context, key string) (func(), error) {
	l.mu.Lock()
	if l.m == nil {
		l.m = make(map[string]*pathLock)
	}
	pl := l.m[key]
	if pl == nil {
		pl = &pathLock{ch: make(chan struct{}, 1)}
		l.m[key] = pl
	}
	pl.refs++
	l.mu.Unlock()
	release := func() {
		l.mu.Lock()
		if pl.refs--; pl.refs == 0 {
			delete(l.m, key)
		}
		l.mu.Unlock()
	}
	unlock := func() { <-pl.ch; release() }
	select { // a free lock is taken even by a caller whose context ended
	case pl.ch <- struct{}{}:
		return unlock, nil
	default:
	}
	select {
	case pl.ch <- struct{}{}:
		return unlock, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}
