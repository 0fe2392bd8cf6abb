// Package atomicfile writes build artifacts so that a failed build never
// leaves a half-written file under the final name: content goes to a
// temporary file in the destination directory, is fsynced, and only then
// renamed over the final path (rename is atomic within one filesystem).
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// File is a pending artifact. Write to it, then Commit; Abort (safe to defer
// after Commit) removes the temporary file if Commit did not happen.
type File struct {
	*os.File
	final     string
	perm      os.FileMode
	committed bool
}

// Create opens a temporary file next to final. The directory must exist and
// be writable; the error says so in terms of the final path.
func Create(final string, perm os.FileMode) (*File, error) {
	dir := filepath.Dir(final)
	f, err := os.CreateTemp(dir, "."+filepath.Base(final)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("unable to create %s: %w", final, err)
	}
	return &File{File: f, final: final, perm: perm}, nil
}

// Commit fsyncs the data, sets the permissions, renames the temporary file to
// the final name and fsyncs the directory so the rename is durable.
func (f *File) Commit() error {
	if f.committed {
		return nil
	}
	if err := f.Chmod(f.perm); err != nil {
		f.Abort()
		return fmt.Errorf("unable to chmod %s: %w", f.final, err)
	}
	if err := f.Sync(); err != nil {
		f.Abort()
		return fmt.Errorf("unable to sync %s: %w", f.final, err)
	}
	if err := f.Close(); err != nil {
		f.Abort()
		return fmt.Errorf("unable to close %s: %w", f.final, err)
	}
	if err := os.Rename(f.Name(), f.final); err != nil {
		f.Abort()
		return fmt.Errorf("unable to rename into %s: %w", f.final, err)
	}
	f.committed = true
	if d, err := os.Open(filepath.Dir(f.final)); err == nil {
		// Best effort: some filesystems refuse fsync on directories.
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// Abort discards the temporary file. It is a no-op after a successful Commit.
func (f *File) Abort() {
	if f.committed {
		return
	}
	f.Close()
	os.Remove(f.Name())
}

// WriteFile is os.WriteFile with the atomic temp+fsync+rename protocol.
func WriteFile(final string, data []byte, perm os.FileMode) error {
	f, err := Create(final, perm)
	if err != nil {
		return err
	}
	defer f.Abort()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("unable to write %s: %w", final, err)
	}
	return f.Commit()
}
