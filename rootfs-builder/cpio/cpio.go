// Package cpio writes reproducible cpio archives in the "newc" (SVR4, magic
// 070701) format that the Linux kernel unpacks as an initramfs.
//
// Reproducibility rules: entries are sorted by path (so every directory
// precedes its contents), missing parent directories are synthesised,
// owners are the entries' own (0:0 unless set), mtimes are clamped to one
// fixed value (SOURCE_DATE_EPOCH or 0; older entry times are kept) and
// inode numbers are assigned sequentially. Regular files that share an
// Inode key are written as one hard-link group: the same inode number and
// nlink in every member and the data in the last member, as GNU cpio
// writes newc and as the kernel's initramfs unpacker links them.
package cpio

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
)

// Magic is the newc header magic.
const Magic = "070701"

// headerLen is the fixed size of a newc header: magic + 13 8-digit fields.
const headerLen = 6 + 13*8

// maxFileSize is the largest file newc can describe (32-bit size field).
const maxFileSize = 1<<32 - 1

// Trailer is the name of the entry that ends every archive.
const Trailer = "TRAILER!!!"

// Entry describes one archive member. Path is relative to the archive root
// ("dev/console", no leading slash). Mode carries both the type bits
// (fs.ModeDir, fs.ModeSymlink, fs.ModeDevice|fs.ModeCharDevice, fs.ModeNamedPipe)
// and the permission bits (including setuid/setgid/sticky).
//
// A regular file's content comes from Data, or when Data is nil from the host
// file Source. A symlink's target is Linkname. Device nodes use Major/Minor.
type Entry struct {
	Path     string
	Mode     fs.FileMode
	Source   string
	Data     []byte
	Linkname string
	Major    uint32
	Minor    uint32
	// UID and GID are the owner.
	UID, GID uint32
	// MTime, when non-zero and older than Options.MTime, is kept;
	// otherwise the entry gets Options.MTime.
	MTime int64
	// Inode, when non-zero, groups regular files that are hard links of
	// one another (any key shared by exactly the members of the group).
	Inode uint64
	// open, when set, opens the content instead of Source (TreeEntries
	// reads through an os.Root).
	open func() (*os.File, error)
}

// Dir returns a directory entry.
func Dir(p string, perm fs.FileMode) Entry {
	return Entry{Path: p, Mode: fs.ModeDir | perm.Perm()}
}

// File returns a regular file entry whose content is read from the host path src.
func File(p, src string, perm fs.FileMode) Entry {
	return Entry{Path: p, Mode: perm & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky), Source: src}
}

// Bytes returns a regular file entry with in-memory content.
func Bytes(p string, data []byte, perm fs.FileMode) Entry {
	if data == nil {
		data = []byte{}
	}
	return Entry{Path: p, Mode: perm & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky), Data: data}
}

// Symlink returns a symbolic link entry.
func Symlink(p, target string) Entry {
	return Entry{Path: p, Mode: fs.ModeSymlink | 0o777, Linkname: target}
}

// CharDev returns a character device node, e.g. CharDev("dev/console", 0o600, 5, 1).
func CharDev(p string, perm fs.FileMode, major, minor uint32) Entry {
	return Entry{Path: p, Mode: fs.ModeDevice | fs.ModeCharDevice | perm.Perm(), Major: major, Minor: minor}
}

// BlockDev returns a block device node.
func BlockDev(p string, perm fs.FileMode, major, minor uint32) Entry {
	return Entry{Path: p, Mode: fs.ModeDevice | perm.Perm(), Major: major, Minor: minor}
}

// Options control archive metadata.
type Options struct {
	// MTime is the modification time stored in every entry (seconds since
	// the epoch). Use SourceDateEpoch() to honour SOURCE_DATE_EPOCH.
	MTime int64
}

// CleanPath normalises an archive path and rejects paths that would escape
// the archive root or are empty. The result has no leading "/" or "./".
func CleanPath(p string) (string, error) {
	if p == "" {
		return "", errors.New("empty path")
	}
	if strings.IndexByte(p, 0) >= 0 {
		return "", fmt.Errorf("path %q contains a NUL byte", p)
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return "", fmt.Errorf("path %q contains \"..\"", p)
		}
	}
	c := strings.TrimPrefix(path.Clean("/"+p), "/")
	if c == "" {
		return "", fmt.Errorf("path %q names the archive root", p)
	}
	return c, nil
}

// unixMode converts a Go file mode to the st_mode bits stored in the header.
func unixMode(m fs.FileMode) (uint32, error) {
	bits := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		bits |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		bits |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		bits |= 0o1000
	}
	switch {
	case m&fs.ModeDir != 0:
		bits |= 0o040000
	case m&fs.ModeSymlink != 0:
		bits |= 0o120000
	case m&fs.ModeCharDevice != 0:
		bits |= 0o020000
	case m&fs.ModeDevice != 0:
		bits |= 0o060000
	case m&fs.ModeNamedPipe != 0:
		bits |= 0o010000
	case m&fs.ModeSocket != 0:
		bits |= 0o140000
	case m.IsRegular():
		bits |= 0o100000
	default:
		return 0, fmt.Errorf("unsupported file type %v", m.Type())
	}
	return bits, nil
}

// Writer streams entries in the order given. It does not sort; use
// WriteEntries for the reproducible, sorted form.
type Writer struct {
	w      io.Writer
	opts   Options
	ino    uint32
	off    int64
	closed bool
}

// NewWriter returns a Writer that writes to w.
func NewWriter(w io.Writer, opts Options) *Writer {
	return &Writer{w: w, opts: opts}
}

func (w *Writer) write(b []byte) error {
	n, err := w.w.Write(b)
	w.off += int64(n)
	return err
}

func (w *Writer) pad(align int64) error {
	if r := w.off % align; r != 0 {
		return w.write(make([]byte, align-r))
	}
	return nil
}

// hdr is the per-entry part of a header.
type hdr struct {
	mode, uid, gid, nlink uint32
	mtime                 int64
	major, minor          uint32
	ino                   uint32
}

func (w *Writer) mtimeOf(e Entry) int64 {
	if e.MTime > 0 && e.MTime < w.opts.MTime {
		return e.MTime
	}
	return w.opts.MTime
}

func (w *Writer) header(name string, h hdr, size int64) error {
	var b bytes.Buffer
	b.WriteString(Magic)
	for _, v := range []uint32{h.ino, h.mode, h.uid, h.gid, h.nlink, uint32(h.mtime), uint32(size), 0, 0, h.major, h.minor, uint32(len(name) + 1), 0} {
		fmt.Fprintf(&b, "%08x", v)
	}
	b.WriteString(name)
	b.WriteByte(0)
	if err := w.write(b.Bytes()); err != nil {
		return err
	}
	return w.pad(4)
}

// WriteEntry appends one entry. Regular files with a Source are read from
// the host here; the file's size must not change while it is copied.
// Hard-link groups (Entry.Inode) need WriteEntries.
func (w *Writer) WriteEntry(e Entry) error {
	return w.writeEntry(e, 0, 1, true)
}

// writeEntry writes e; for a hard-link member ino is the group's inode
// number (0: allocate one), nlink the group size, and data whether this
// member carries the content.
func (w *Writer) writeEntry(e Entry, ino, nlink uint32, data bool) error {
	if w.closed {
		return errors.New("cpio: write after Close")
	}
	name, err := CleanPath(e.Path)
	if err != nil {
		return fmt.Errorf("cpio: %w", err)
	}
	if w.opts.MTime < 0 || w.opts.MTime > 1<<32-1 {
		return fmt.Errorf("cpio: mtime %d does not fit the 32-bit newc field", w.opts.MTime)
	}
	mode, err := unixMode(e.Mode)
	if err != nil {
		return fmt.Errorf("cpio: %s: %w", name, err)
	}
	if ino == 0 {
		w.ino++
		ino = w.ino
	}
	h := hdr{mode: mode, uid: e.UID, gid: e.GID, nlink: 1, mtime: w.mtimeOf(e), ino: ino}
	switch {
	case e.Mode.IsDir():
		h.nlink = 2
		return w.header(name, h, 0)
	case e.Mode&fs.ModeSymlink != 0:
		if e.Linkname == "" {
			return fmt.Errorf("cpio: %s: symlink without target", name)
		}
		if err := w.header(name, h, int64(len(e.Linkname))); err != nil {
			return err
		}
		if err := w.write([]byte(e.Linkname)); err != nil {
			return err
		}
		return w.pad(4)
	case e.Mode.IsRegular():
		h.nlink = nlink
		if !data {
			return w.header(name, h, 0)
		}
		return w.writeFile(name, h, e)
	default:
		h.major, h.minor = e.Major, e.Minor
		return w.header(name, h, 0)
	}
}

func (w *Writer) writeFile(name string, h hdr, e Entry) error {
	var r io.Reader
	var size int64
	if e.Data != nil || e.Source == "" && e.open == nil {
		r, size = bytes.NewReader(e.Data), int64(len(e.Data))
	} else {
		var f *os.File
		var err error
		if e.open != nil {
			f, err = e.open()
		} else {
			f, err = os.Open(e.Source)
		}
		if err != nil {
			return fmt.Errorf("cpio: %s: %w", name, err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return fmt.Errorf("cpio: %s: %w", name, err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("cpio: %s: source %s is not a regular file", name, e.Source)
		}
		r, size = f, st.Size()
	}
	if size > maxFileSize {
		return fmt.Errorf("cpio: %s: %d bytes is more than newc can store (4 GiB)", name, size)
	}
	if err := w.header(name, h, size); err != nil {
		return err
	}
	n, err := io.Copy(writerFunc(w.write), io.LimitReader(r, size))
	if err != nil {
		return fmt.Errorf("cpio: %s: %w", name, err)
	}
	if n != size {
		return fmt.Errorf("cpio: %s: file shrank while archiving (%d of %d bytes)", name, n, size)
	}
	return w.pad(4)
}

type writerFunc func([]byte) error

func (f writerFunc) Write(b []byte) (int, error) {
	if err := f(b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Close writes the trailer and pads the archive to a 512-byte boundary (as
// GNU cpio does). It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	if err := w.header(Trailer, hdr{nlink: 1, mtime: w.opts.MTime}, 0); err != nil {
		return err
	}
	return w.pad(512)
}

// Normalize cleans paths, rejects duplicates, adds missing parent
// directories (mode 0755) and sorts the result so each directory precedes
// its contents. The input slice is not modified.
func Normalize(entries []Entry) ([]Entry, error) {
	byPath := make(map[string]Entry, len(entries))
	for _, e := range entries {
		p, err := CleanPath(e.Path)
		if err != nil {
			return nil, fmt.Errorf("cpio: %w", err)
		}
		if prev, ok := byPath[p]; ok {
			// The same directory listed twice is harmless; anything else is
			// ambiguous and refused.
			if !(prev.Mode.IsDir() && e.Mode.IsDir()) {
				return nil, fmt.Errorf("cpio: duplicate entry %q", p)
			}
		}
		e.Path = p
		byPath[p] = e
	}
	for p := range byPath {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if pe, ok := byPath[d]; ok {
				if !pe.Mode.IsDir() {
					return nil, fmt.Errorf("cpio: %q is inside %q, which is not a directory", p, d)
				}
				continue
			}
			byPath[d] = Dir(d, 0o755)
		}
	}
	out := make([]Entry, 0, len(byPath))
	for _, e := range byPath {
		out = append(out, e)
	}
	// Plain byte order puts "a" before "a/b" (a prefix sorts first), so
	// parents always precede children.
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// WriteEntries writes a complete, reproducible archive of entries to w.
func WriteEntries(w io.Writer, entries []Entry, opts Options) error {
	sorted, err := Normalize(entries)
	if err != nil {
		return err
	}
	// Hard-link groups: count members and find the last one, which
	// carries the data.
	count := map[uint64]uint32{}
	last := map[uint64]string{}
	for _, e := range sorted {
		if e.Inode != 0 && e.Mode.IsRegular() {
			count[e.Inode]++
			last[e.Inode] = e.Path
		}
	}
	cw := NewWriter(w, opts)
	groupIno := map[uint64]uint32{}
	for _, e := range sorted {
		if e.Inode == 0 || !e.Mode.IsRegular() || count[e.Inode] < 2 {
			if err := cw.WriteEntry(e); err != nil {
				return err
			}
			continue
		}
		ino, ok := groupIno[e.Inode]
		if !ok {
			cw.ino++
			ino = cw.ino
			groupIno[e.Inode] = ino
		}
		if err := cw.writeEntry(e, ino, count[e.Inode], last[e.Inode] == e.Path); err != nil {
			return err
		}
	}
	return cw.Close()
}
