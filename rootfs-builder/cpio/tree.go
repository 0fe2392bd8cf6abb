package cpio

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// TreeEntries lists every file below root (root itself excluded) as entries.
// Regular files reference their host path and are read when written; hard
// links become independent copies; sockets are skipped (they cannot be
// recreated meaningfully); owners and times are not recorded.
func TreeEntries(root string) ([]Entry, error) {
	st, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("cpio: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("cpio: %s is not a directory", root)
	}
	var entries []Entry
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		m := info.Mode()
		switch {
		case m.IsDir():
			entries = append(entries, Entry{Path: rel, Mode: m})
		case m.IsRegular():
			entries = append(entries, Entry{Path: rel, Mode: m, Source: p})
		case m&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			entries = append(entries, Entry{Path: rel, Mode: m, Linkname: target})
		case m&fs.ModeDevice != 0:
			sys, ok := info.Sys().(*syscall.Stat_t)
			if !ok {
				return fmt.Errorf("%s: no device number available", p)
			}
			entries = append(entries, Entry{Path: rel, Mode: m, Major: unix.Major(sys.Rdev), Minor: unix.Minor(sys.Rdev)})
		case m&fs.ModeNamedPipe != 0:
			entries = append(entries, Entry{Path: rel, Mode: m})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cpio: walking %s: %w", root, err)
	}
	return entries, nil
}

// WriteTree writes a reproducible archive of the directory tree at root.
func WriteTree(w io.Writer, root string, opts Options) error {
	entries, err := TreeEntries(root)
	if err != nil {
		return err
	}
	return WriteEntries(w, entries, opts)
}
