// Package confine holds the filesystem operations rootfs-builder performs
// on a staging tree that os.Root does not offer: writing a whole file
// without following a planted symlink, setting times and xattrs on an
// entry without following it, walking, and clamping times.
//
// The staging tree holds an untrusted image, so every operation goes
// through an *os.Root opened on it: parents are resolved inside the root
// (a symlink leaving it is an error, never followed onto the host) and the
// final component is acted on itself, not on what it points to. Code in
// rootfs-builder must not touch staging paths with plain os.* path calls;
// TestNoPlainPathCalls in rootfs-builder/build enforces that.
package confine

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// split returns the parent directory and final component of a cleaned,
// root-relative name. The final component is never "." or "..".
func split(name string) (string, string, error) {
	c := path.Clean(name)
	if path.IsAbs(c) || c == "." || c == ".." || len(c) >= 3 && c[:3] == "../" {
		return "", "", fmt.Errorf("%q is not a path below the root", name)
	}
	return path.Dir(c), path.Base(c), nil
}

// withParent runs fn with an fd of name's parent directory, opened through
// the root (so the parent resolves inside it), and name's base.
func withParent(r *os.Root, name string, fn func(dirfd int, base string) error) error {
	dir, base, err := split(name)
	if err != nil {
		return err
	}
	d, err := r.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	st, err := d.Stat()
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s: parent is not a directory", name)
	}
	return fn(int(d.Fd()), base)
}

// WriteFile replaces name with a new regular file holding data. An entry
// already at name (a file, or a symlink planted by the image) is removed
// first, and the file is created with O_EXCL|O_NOFOLLOW, so the write can
// never land on anything but a fresh inode inside the root. Missing parents
// are created with mode 0755.
func WriteFile(r *os.Root, name string, data []byte, perm os.FileMode) error {
	return Copy(r, name, bytes.NewReader(data), perm)
}

// Copy is WriteFile with content from src.
func Copy(r *os.Root, name string, src io.Reader, perm os.FileMode) error {
	dir, _, err := split(name)
	if err != nil {
		return err
	}
	if err := r.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if st, err := r.Lstat(name); err == nil {
		if st.IsDir() {
			return fmt.Errorf("%s: is a directory", name)
		}
		if err := r.Remove(name); err != nil {
			return err
		}
	}
	f, err := r.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, src); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return r.Chmod(name, perm)
}

// Lutimes sets name's access and modification times without following it
// when it is a symlink.
func Lutimes(r *os.Root, name string, atime, mtime time.Time) error {
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	return withParent(r, name, func(dirfd int, base string) error {
		if err := unix.UtimesNanoAt(dirfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("unable to set times on %s: %w", name, err)
		}
		return nil
	})
}

// procPath names base inside the directory dirfd through /proc/self/fd:
// the kernel resolves the fd's magic link to that exact directory, and the
// single-component base is not followed by the l*xattr calls, so xattr
// syscalls (which have no *at form before Linux 6.13) stay confined.
func procPath(dirfd int, base string) string {
	return "/proc/self/fd/" + strconv.Itoa(dirfd) + "/" + base
}

// Lsetxattr sets an extended attribute on name itself (not a symlink's
// target).
func Lsetxattr(r *os.Root, name, attr string, value []byte) error {
	return withParent(r, name, func(dirfd int, base string) error {
		if err := unix.Lsetxattr(procPath(dirfd, base), attr, value, 0); err != nil {
			return fmt.Errorf("unable to set xattr %s on %s: %w", attr, name, err)
		}
		return nil
	})
}

// Xattrs returns name's extended attributes (not following a symlink).
func Xattrs(r *os.Root, name string) (map[string][]byte, error) {
	var out map[string][]byte
	err := withParent(r, name, func(dirfd int, base string) error {
		p := procPath(dirfd, base)
		sz, err := unix.Llistxattr(p, nil)
		if err != nil {
			if errors.Is(err, unix.ENOTSUP) {
				return nil
			}
			return fmt.Errorf("unable to list xattrs of %s: %w", name, err)
		}
		if sz == 0 {
			return nil
		}
		buf := make([]byte, sz)
		sz, err = unix.Llistxattr(p, buf)
		if err != nil {
			return fmt.Errorf("unable to list xattrs of %s: %w", name, err)
		}
		out = map[string][]byte{}
		start := 0
		for i := 0; i < sz; i++ {
			if buf[i] != 0 {
				continue
			}
			attr := string(buf[start:i])
			start = i + 1
			if attr == "" {
				continue
			}
			n, err := unix.Lgetxattr(p, attr, nil)
			if err != nil {
				return fmt.Errorf("unable to read xattr %s of %s: %w", attr, name, err)
			}
			v := make([]byte, n)
			if n > 0 {
				if n, err = unix.Lgetxattr(p, attr, v); err != nil {
					return fmt.Errorf("unable to read xattr %s of %s: %w", attr, name, err)
				}
			}
			out[attr] = v[:n]
		}
		return nil
	})
	return out, err
}

// Mknod creates a device node or fifo at name (mode holds S_IF* type bits
// and permissions).
func Mknod(r *os.Root, name string, mode uint32, dev uint64) error {
	return withParent(r, name, func(dirfd int, base string) error {
		if err := unix.Mknodat(dirfd, base, mode, int(dev)); err != nil {
			return fmt.Errorf("mknod %s: %w", name, err)
		}
		return nil
	})
}

// Walk walks the tree below the root in lexical order without following
// symlinks; names passed to fn are root-relative ("." first).
func Walk(r *os.Root, fn fs.WalkDirFunc) error {
	return fs.WalkDir(r.FS(), ".", fn)
}

// ClampTimes sets every entry's mtime that is later than epoch to epoch,
// keeping older ones (as reproducible-builds tools clamp to
// SOURCE_DATE_EPOCH), and sets every atime to the resulting mtime, so
// reading the tree cannot change what is built from it. Directories are
// done after their contents, since touching an entry changes its
// directory's mtime.
func ClampTimes(r *os.Root, epoch int64) error {
	limit := time.Unix(epoch, 0)
	var dirs []string
	err := Walk(r, func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, name)
			return nil
		}
		return clampOne(r, name, limit)
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := clampOne(r, dirs[i], limit); err != nil {
			return err
		}
	}
	return nil
}

func clampOne(r *os.Root, name string, limit time.Time) error {
	st, err := r.Lstat(name)
	if err != nil {
		return err
	}
	m := st.ModTime()
	if m.After(limit) {
		m = limit
	}
	if name == "." {
		// The root itself: its own fd, not a parent's.
		f, err := r.Open(".")
		if err != nil {
			return err
		}
		defer f.Close()
		tv := unix.NsecToTimeval(m.UnixNano())
		if err := unix.Futimes(int(f.Fd()), []unix.Timeval{tv, tv}); err != nil {
			return fmt.Errorf("unable to set times on the root: %w", err)
		}
		return nil
	}
	return Lutimes(r, name, m, m)
}
