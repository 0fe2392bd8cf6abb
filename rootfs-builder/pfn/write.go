package pfn

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/keelvm/keel/rootfs-builder/internal/atomicfile"
)

// Options choose the layout. The zero value gives Kata's layout: RAM mode,
// fs at 2 MiB, 2 MiB alignment, zero UUIDs.
type Options struct {
	// UUID identifies the pfn instance; any value works on a label-less
	// namespace. Fix it for reproducible images.
	UUID [16]byte
	// Mode defaults to ModeRAM.
	Mode Mode
	// DataOffset defaults to DefaultDataOffset (RAM mode) or the smallest
	// aligned offset that holds the struct pages (PMEM mode).
	DataOffset uint64
	// Align defaults to DefaultAlign.
	Align uint32
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) / a * a }

// Layout computes the info block for a filesystem of fsSize bytes. The
// image (info area + filesystem + zero tail) is TotalSize bytes long, a
// multiple of 2 MiB.
func Layout(fsSize int64, opts Options) (*InfoBlock, int64, error) {
	if fsSize <= 0 {
		return nil, 0, fmt.Errorf("filesystem size %d must be positive", fsSize)
	}
	mode := opts.Mode
	if mode == ModeNone {
		mode = ModeRAM
	}
	if mode != ModeRAM && mode != ModePMEM {
		return nil, 0, fmt.Errorf("unsupported PFN mode %d", uint32(mode))
	}
	align := uint64(opts.Align)
	if align == 0 {
		align = DefaultAlign
	}
	if align < PageSize || align&(align-1) != 0 {
		return nil, 0, fmt.Errorf("alignment %#x must be a power of two >= %d", align, PageSize)
	}
	// The namespace end must be aligned to the 2 MiB subsection size.
	endAlign := max(align, DefaultAlign)
	dataoff := opts.DataOffset
	if dataoff == 0 {
		dataoff = max(DefaultDataOffset, align)
	}
	if dataoff < reserveEnd || dataoff%align != 0 {
		return nil, 0, fmt.Errorf("data offset %#x must be a multiple of the alignment %#x and at least %#x", dataoff, align, reserveEnd)
	}
	var total uint64
	for range 8 {
		total = alignUp(dataoff+uint64(fsSize), endAlign)
		if mode != ModePMEM {
			break
		}
		// Mirror nd_pfn_init: struct pages for every page after the
		// reserved 8 KiB, rounded up to the alignment.
		need := alignUp(reserveEnd+PageStructSize*((total-reserveEnd)/PageSize), align)
		if need <= dataoff {
			break
		}
		if opts.DataOffset != 0 {
			return nil, 0, fmt.Errorf("pmem mode needs a data offset of at least %#x for a %d-byte filesystem, have %#x", need, fsSize, dataoff)
		}
		dataoff = need
	}
	b := &InfoBlock{
		Signature:      Signature,
		UUID:           opts.UUID,
		VersionMajor:   1,
		VersionMinor:   4,
		DataOff:        dataoff,
		NPFNs:          (total - dataoff) / PageSize,
		Mode:           mode,
		Align:          uint32(align),
		PageSize:       PageSize,
		PageStructSize: PageStructSize,
	}
	b.Marshal() // fills Checksum
	return b, int64(total), nil
}

// Write writes the info area [0, dataoff) — zeros plus the info block at
// 4 KiB — for a filesystem of fsSize bytes, and returns the block and the
// total image size. The caller writes the filesystem at b.FSOffset() and
// extends the file to the total size.
func Write(w io.WriterAt, fsSize int64, opts Options) (*InfoBlock, int64, error) {
	b, total, err := Layout(fsSize, opts)
	if err != nil {
		return nil, 0, err
	}
	area := make([]byte, b.DataOff)
	copy(area[InfoOffset:], b.Marshal())
	if _, err := w.WriteAt(area, 0); err != nil {
		return nil, 0, fmt.Errorf("unable to write PFN info area: %w", err)
	}
	return b, total, nil
}

// Wrap writes out = info area + the filesystem image fsImage + zero tail.
// The output appears under its final name only when complete.
func Wrap(fsImage, out string, opts Options) (*InfoBlock, error) {
	in, err := os.Open(fsImage)
	if err != nil {
		return nil, fmt.Errorf("unable to open filesystem image: %w", err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", fsImage)
	}
	f, err := atomicfile.Create(out, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Abort()
	b, total, err := Write(f, st.Size(), opts)
	if err != nil {
		return nil, err
	}
	// Size first, then copy only the data extents: a large, mostly empty
	// ext4 image stays sparse in the wrapped file.
	if err := f.Truncate(total); err != nil {
		return nil, fmt.Errorf("unable to size %s: %w", out, err)
	}
	if err := copySparse(f.File, in, b.FSOffset(), st.Size()); err != nil {
		return nil, fmt.Errorf("unable to copy filesystem image into %s: %w", out, err)
	}
	if err := f.Truncate(total); err != nil {
		return nil, fmt.Errorf("unable to size %s: %w", out, err)
	}
	return b, f.Commit()
}

// copySparse copies src[0:size) to dst at off, skipping holes found with
// SEEK_DATA/SEEK_HOLE (falling back to a full copy where unsupported).
func copySparse(dst, src *os.File, off, size int64) error {
	copyRange := func(from, to int64) error {
		n, err := io.Copy(io.NewOffsetWriter(dst, off+from), io.NewSectionReader(src, from, to-from))
		if err == nil && n != to-from {
			err = fmt.Errorf("short copy: %d of %d bytes (file changed?)", n, to-from)
		}
		return err
	}
	for pos := int64(0); pos < size; {
		data, err := unix.Seek(int(src.Fd()), pos, unix.SEEK_DATA)
		if err == unix.ENXIO {
			return nil // only a hole remains
		}
		if err != nil {
			return copyRange(pos, size)
		}
		hole, err := unix.Seek(int(src.Fd()), data, unix.SEEK_HOLE)
		if err != nil || hole > size {
			hole = size
		}
		if err := copyRange(data, hole); err != nil {
			return err
		}
		pos = hole
	}
	return nil
}

// ReadFile opens path and returns its validated info block.
func ReadFile(path string) (*InfoBlock, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	b, err := Read(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}
