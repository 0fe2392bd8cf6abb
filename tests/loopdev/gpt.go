package loopdev

import (
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"
)

// GPTImage writes a disk image with a GUID partition table holding one
// partition per file (in order: partition 1 is files[0]), each aligned
// to 1 MiB: the layout runtime-rs builds for EROFS layers (one disk, one
// partition per layer). Protective MBR, primary and backup GPT, as the
// kernel's partition parser checks them (CONFIG_EFI_PARTITION: Keel's and
// Debian's guest kernels have it; some host kernels do not).
func GPTImage(t testing.TB, files ...string) string {
	t.Helper()
	const sector = 512
	const align = 2048 // sectors
	type part struct{ start, end uint64 }
	var parts []part
	next := uint64(align)
	for _, f := range files {
		fi, err := os.Stat(f)
		mustT(t, err)
		n := (uint64(fi.Size()) + sector - 1) / sector
		parts = append(parts, part{next, next + n - 1})
		next += (n + align - 1) / align * align
	}
	total := next + align // room for the backup table
	img := filepath.Join(t.TempDir(), "gpt.img")
	out, err := os.Create(img)
	mustT(t, err)
	defer out.Close()
	mustT(t, out.Truncate(int64(total*sector)))

	// Protective MBR: one partition of type 0xEE covering the disk.
	mbr := make([]byte, sector)
	pe := mbr[446:]
	pe[2], pe[4], pe[5], pe[6], pe[7] = 0x02, 0xEE, 0xFF, 0xFF, 0xFF
	binary.LittleEndian.PutUint32(pe[8:], 1)
	binary.LittleEndian.PutUint32(pe[12:], uint32(min(total-1, 0xFFFFFFFF)))
	mbr[510], mbr[511] = 0x55, 0xAA
	_, err = out.WriteAt(mbr, 0)
	mustT(t, err)

	// 128 entries of 128 bytes: 32 sectors.
	entries := make([]byte, 128*128)
	linuxFS := []byte{0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4}
	for i, p := range parts {
		e := entries[i*128:]
		copy(e[0:16], linuxFS)
		e[16], e[17] = byte(i+1), 0x4b // unique GUID: anything non-zero
		binary.LittleEndian.PutUint64(e[32:], p.start)
		binary.LittleEndian.PutUint64(e[40:], p.end)
		b, err := os.ReadFile(files[i])
		mustT(t, err)
		_, err = out.WriteAt(b, int64(p.start*sector))
		mustT(t, err)
	}
	entriesCRC := crc32.ChecksumIEEE(entries)
	header := func(my, alt, entryLBA uint64) []byte {
		h := make([]byte, sector)
		copy(h, "EFI PART")
		binary.LittleEndian.PutUint32(h[8:], 0x00010000)
		binary.LittleEndian.PutUint32(h[12:], 92)
		binary.LittleEndian.PutUint64(h[24:], my)
		binary.LittleEndian.PutUint64(h[32:], alt)
		binary.LittleEndian.PutUint64(h[40:], 34)
		binary.LittleEndian.PutUint64(h[48:], total-34)
		h[56], h[57] = 0x6b, 0x65 // disk GUID
		binary.LittleEndian.PutUint64(h[72:], entryLBA)
		binary.LittleEndian.PutUint32(h[80:], 128)
		binary.LittleEndian.PutUint32(h[84:], 128)
		binary.LittleEndian.PutUint32(h[88:], entriesCRC)
		binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
		return h
	}
	for _, w := range []struct {
		data []byte
		lba  uint64
	}{
		{header(1, total-1, 2), 1}, {entries, 2},
		{entries, total - 33}, {header(total-1, 1, total-33), total - 1},
	} {
		_, err := out.WriteAt(w.data, int64(w.lba*sector))
		mustT(t, err)
	}
	return img
}

func mustT(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
