package cpio

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/keelvm/keel/rootfs-builder/internal/confine"
)

// TreeEntries lists every file below root (root itself excluded) as
// entries, reading the tree through an os.Root (symlinks are recorded,
// never followed). Entries keep their owners, mtimes (clamped when
// written) and hard-link groups; regular files are read when written.
// Sockets are skipped (they cannot be recreated meaningfully). A tree with
// extended attributes (file capabilities, user xattrs...) is refused: newc
// cannot carry them, and dropping them would silently change what the
// image allows.
func TreeEntries(root string) ([]Entry, error) {
	st, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("cpio: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("cpio: %s is not a directory", root)
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, fmt.Errorf("cpio: %w", err)
	}
	defer r.Close()
	var entries []Entry
	err = confine.Walk(r, func(rel string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		sys, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no stat data", rel)
		}
		if x, err := confine.Xattrs(r, rel); err != nil {
			return err
		} else if len(x) > 0 {
			var names []string
			for k := range x {
				names = append(names, k)
			}
			sort.Strings(names)
			return fmt.Errorf("/%s has extended attributes (%s) that an initrd (cpio newc) cannot carry; build an image (ext4 or erofs) instead", rel, strings.Join(names, ", "))
		}
		e := Entry{Path: rel, Mode: info.Mode(), UID: sys.Uid, GID: sys.Gid, MTime: info.ModTime().Unix()}
		m := info.Mode()
		switch {
		case m.IsDir():
		case m.IsRegular():
			e.Source = filepath.Join(root, filepath.FromSlash(rel))
			e.open = openIn(root, rel)
			if sys.Nlink > 1 {
				e.Inode = sys.Ino
			}
		case m&fs.ModeSymlink != 0:
			if e.Linkname, err = r.Readlink(rel); err != nil {
				return err
			}
		case m&fs.ModeDevice != 0:
			e.Major, e.Minor = unix.Major(sys.Rdev), unix.Minor(sys.Rdev)
		case m&fs.ModeNamedPipe != 0:
		default:
			return nil
		}
		entries = append(entries, e)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cpio: walking %s: %w", root, err)
	}
	return entries, nil
}

// openIn opens rel inside dir through a fresh os.Root, refusing anything
// but a regular file, when the entry is written.
func openIn(dir, rel string) func() (*os.File, error) {
	return func() (*os.File, error) {
		r, err := os.OpenRoot(dir)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		return r.OpenFile(rel, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	}
}

// WriteTree writes a reproducible archive of the directory tree at root.
func WriteTree(w io.Writer, root string, opts Options) error {
	entries, err := TreeEntries(root)
	if err != nil {
		return err
	}
	return WriteEntries(w, entries, opts)
}
