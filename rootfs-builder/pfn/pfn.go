// Package pfn writes and reads the NVDIMM "fsdax" PFN info block that lets
// a raw filesystem image be exposed to a guest as `-device nvdimm` and
// mounted with dax.
//
// On a label-less NVDIMM namespace (what QEMU presents), the Linux kernel
// probes for a `struct nd_pfn_sb` (drivers/nvdimm/pfn.h) at byte offset
// 4 KiB of the namespace; if its signature and checksum validate, the block
// device /dev/pmemN starts at the info block's dataoff and supports DAX.
// Without the block the device is plain "raw" mode and DAX mounts fail with
// "DAX unsupported by block device".
//
// Image layout written by this package (the same one Kata's nsdax tool
// produces):
//
//	0      .. 4 KiB   zero
//	4 KiB  .. 8 KiB   info block (struct nd_pfn_sb, little endian)
//	8 KiB  .. 2 MiB   zero (PFN_MODE_PMEM keeps struct pages here)
//	2 MiB  .. end     filesystem image, tail zero-padded to 2 MiB
//
// The whole file is a multiple of 2 MiB because the kernel requires the
// namespace end (minus end_trunc, which we leave 0) to be aligned to
// memremap_compat_align(), 2 MiB on x86-64.
package pfn

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
)

// On-disk constants from the kernel (drivers/nvdimm/pfn.h, nd.h).
const (
	// InfoOffset is where the info block lives in the namespace (SZ_4K).
	InfoOffset = 4096
	// InfoSize is sizeof(struct nd_pfn_sb).
	InfoSize = 4096
	// reserveEnd is nd_info_block_reserve(): the first 8 KiB belong to the
	// info block and cannot hold data or struct pages.
	reserveEnd = 8192
	// DefaultDataOffset is where the filesystem starts.
	DefaultDataOffset = 2 << 20
	// DefaultAlign is the mapping alignment recorded in the block.
	DefaultAlign = 2 << 20
	// PageSize is the x86-64 PAGE_SIZE recorded in version 1.4 blocks.
	PageSize = 4096
	// PageStructSize is sizeof(struct page) on production x86-64 kernels;
	// the kernel refuses PMEM mode blocks that record less.
	PageStructSize = 64
	// checksumOffset is the offset of the trailing __le64 checksum.
	checksumOffset = InfoSize - 8
)

// Signature is PFN_SIG, "NVDIMM_PFN_INFO\0".
var Signature = [16]byte{'N', 'V', 'D', 'I', 'M', 'M', '_', 'P', 'F', 'N', '_', 'I', 'N', 'F', 'O', 0}

// Mode is enum nd_pfn_mode: where the kernel keeps the struct pages
// describing the device.
type Mode uint32

// Modes. RAM keeps struct pages in guest RAM and works for any image size
// with a 2 MiB dataoff (Kata's choice); PMEM keeps them on the device and
// needs dataoff to cover 64 bytes per 4 KiB page.
const (
	ModeNone Mode = 0
	ModeRAM  Mode = 1
	ModePMEM Mode = 2
)

func (m Mode) String() string {
	switch m {
	case ModeNone:
		return "none"
	case ModeRAM:
		return "ram"
	case ModePMEM:
		return "pmem"
	}
	return fmt.Sprintf("mode(%d)", uint32(m))
}

// InfoBlock mirrors struct nd_pfn_sb (version 1.4).
type InfoBlock struct {
	Signature      [16]byte
	UUID           [16]byte
	ParentUUID     [16]byte
	Flags          uint32
	VersionMajor   uint16
	VersionMinor   uint16
	DataOff        uint64 // relative to the namespace start (+ start_pad)
	NPFNs          uint64
	Mode           Mode
	StartPad       uint32 // minor >= 1; deprecated, always 0 here
	EndTrunc       uint32 // minor >= 1
	Align          uint32 // minor >= 2
	PageSize       uint32 // minor >= 4
	PageStructSize uint16 // minor >= 4
	Checksum       uint64
}

// Field offsets inside the 4 KiB block.
const (
	offUUID           = 16
	offParentUUID     = 32
	offFlags          = 48
	offVersionMajor   = 52
	offVersionMinor   = 54
	offDataOff        = 56
	offNPFNs          = 64
	offMode           = 72
	offStartPad       = 76
	offEndTrunc       = 80
	offAlign          = 84
	offPageSize       = 88
	offPageStructSize = 92
)

// Fletcher64 is the kernel's nd_fletcher64(addr, len, le=true): 32-bit
// little-endian words summed into a wrapping 32-bit low sum and a 64-bit
// running sum of the low sums; result is hi<<32 | lo. Trailing bytes that do
// not fill a word are ignored, as in the kernel.
func Fletcher64(b []byte) uint64 {
	var lo uint32
	var hi uint64
	for i := 0; i+4 <= len(b); i += 4 {
		lo += binary.LittleEndian.Uint32(b[i:])
		hi += uint64(lo)
	}
	return hi<<32 | uint64(lo)
}

// Marshal encodes the block into 4096 bytes, computing the checksum over
// the block with the checksum field zeroed (nd_sb_checksum). The Checksum
// field of b is updated.
func (b *InfoBlock) Marshal() []byte {
	buf := make([]byte, InfoSize)
	le := binary.LittleEndian
	copy(buf[0:], b.Signature[:])
	copy(buf[offUUID:], b.UUID[:])
	copy(buf[offParentUUID:], b.ParentUUID[:])
	le.PutUint32(buf[offFlags:], b.Flags)
	le.PutUint16(buf[offVersionMajor:], b.VersionMajor)
	le.PutUint16(buf[offVersionMinor:], b.VersionMinor)
	le.PutUint64(buf[offDataOff:], b.DataOff)
	le.PutUint64(buf[offNPFNs:], b.NPFNs)
	le.PutUint32(buf[offMode:], uint32(b.Mode))
	le.PutUint32(buf[offStartPad:], b.StartPad)
	le.PutUint32(buf[offEndTrunc:], b.EndTrunc)
	le.PutUint32(buf[offAlign:], b.Align)
	le.PutUint32(buf[offPageSize:], b.PageSize)
	le.PutUint16(buf[offPageStructSize:], b.PageStructSize)
	b.Checksum = Fletcher64(buf)
	le.PutUint64(buf[checksumOffset:], b.Checksum)
	return buf
}

// Errors returned by Parse and Read; wrapped with detail.
var (
	ErrNoInfoBlock = errors.New("no NVDIMM PFN info block")
	ErrChecksum    = errors.New("PFN info block checksum mismatch")
	ErrInvalid     = errors.New("invalid PFN info block")
)

// Parse decodes and checks a 4096-byte info block the way the kernel's
// nd_pfn_validate does before it looks at the namespace: signature,
// checksum, mode, and the fields older minor versions lack are defaulted.
func Parse(buf []byte) (*InfoBlock, error) {
	if len(buf) < InfoSize {
		return nil, fmt.Errorf("%w: %d bytes, need %d", ErrNoInfoBlock, len(buf), InfoSize)
	}
	buf = buf[:InfoSize]
	le := binary.LittleEndian
	b := &InfoBlock{}
	copy(b.Signature[:], buf)
	if b.Signature != Signature {
		return nil, fmt.Errorf("%w: signature %q", ErrNoInfoBlock, bytes.TrimRight(b.Signature[:], "\x00"))
	}
	b.Checksum = le.Uint64(buf[checksumOffset:])
	tmp := bytes.Clone(buf)
	clear(tmp[checksumOffset:])
	if sum := Fletcher64(tmp); sum != b.Checksum {
		return nil, fmt.Errorf("%w: stored %#016x, computed %#016x", ErrChecksum, b.Checksum, sum)
	}
	copy(b.UUID[:], buf[offUUID:])
	copy(b.ParentUUID[:], buf[offParentUUID:])
	b.Flags = le.Uint32(buf[offFlags:])
	b.VersionMajor = le.Uint16(buf[offVersionMajor:])
	b.VersionMinor = le.Uint16(buf[offVersionMinor:])
	b.DataOff = le.Uint64(buf[offDataOff:])
	b.NPFNs = le.Uint64(buf[offNPFNs:])
	b.Mode = Mode(le.Uint32(buf[offMode:]))
	b.StartPad = le.Uint32(buf[offStartPad:])
	b.EndTrunc = le.Uint32(buf[offEndTrunc:])
	b.Align = le.Uint32(buf[offAlign:])
	b.PageSize = le.Uint32(buf[offPageSize:])
	b.PageStructSize = le.Uint16(buf[offPageStructSize:])
	// Fields introduced by later minor versions are ignored by the kernel
	// for older blocks; mirror its defaults so callers see effective values.
	if b.VersionMinor < 1 {
		b.StartPad, b.EndTrunc = 0, 0
	}
	if b.VersionMinor < 2 || b.Align == 0 {
		b.Align = 0
		if b.DataOff > 0 {
			b.Align = uint32(min(uint64(1)<<(63-bits.LeadingZeros64(b.DataOff)), 1<<31))
		}
	}
	if b.VersionMinor < 4 {
		b.PageSize, b.PageStructSize = PageSize, PageStructSize
	}
	switch b.Mode {
	case ModeRAM, ModePMEM:
	default:
		return nil, fmt.Errorf("%w: mode %d (want ram=1 or pmem=2)", ErrInvalid, uint32(b.Mode))
	}
	if b.DataOff < reserveEnd || b.DataOff%PageSize != 0 {
		return nil, fmt.Errorf("%w: dataoff %#x must be page aligned and at least %#x", ErrInvalid, b.DataOff, reserveEnd)
	}
	if b.Align != 0 && (b.DataOff+uint64(b.StartPad))%uint64(b.Align) != 0 {
		return nil, fmt.Errorf("%w: dataoff %#x is not aligned to %#x", ErrInvalid, b.DataOff, b.Align)
	}
	if b.Mode == ModePMEM {
		if b.PageSize > PageSize {
			return nil, fmt.Errorf("%w: page size %d larger than %d", ErrInvalid, b.PageSize, PageSize)
		}
		if b.PageStructSize < PageStructSize {
			return nil, fmt.Errorf("%w: struct page size %d smaller than %d", ErrInvalid, b.PageStructSize, PageStructSize)
		}
	}
	return b, nil
}

// Read reads and validates the info block of the image r of the given
// total size, and checks that the data area lies inside the image.
func Read(r io.ReaderAt, size int64) (*InfoBlock, error) {
	buf := make([]byte, InfoSize)
	if _, err := r.ReadAt(buf, InfoOffset); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: image is only %d bytes", ErrNoInfoBlock, size)
		}
		return nil, fmt.Errorf("unable to read PFN info block: %w", err)
	}
	b, err := Parse(buf)
	if err != nil {
		return nil, err
	}
	if b.DataOff >= uint64(size) {
		return nil, fmt.Errorf("%w: dataoff %#x is beyond the %d-byte image", ErrInvalid, b.DataOff, size)
	}
	if uint64(b.EndTrunc) > uint64(size)-b.DataOff {
		return nil, fmt.Errorf("%w: end_trunc %#x larger than the data area", ErrInvalid, b.EndTrunc)
	}
	if b.Mode == ModePMEM {
		// The kernel needs room before dataoff for 64 bytes of struct page
		// per data page; otherwise mapping fails at probe time.
		need := reserveEnd + b.NPFNs*uint64(b.PageStructSize)
		if b.DataOff < need {
			return nil, fmt.Errorf("%w: pmem mode needs dataoff >= %#x for %d pages, have %#x", ErrInvalid, need, b.NPFNs, b.DataOff)
		}
	}
	return b, nil
}

// FSOffset returns where the filesystem starts in the image.
func (b *InfoBlock) FSOffset() int64 { return int64(b.DataOff) + int64(b.StartPad) }
