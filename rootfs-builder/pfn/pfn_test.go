package pfn

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// kernelFletcher is an independent transcription of nd_fletcher64 with
// le=true, used to check the package's implementation.
func kernelFletcher(b []byte) uint64 {
	var lo32 uint32
	var hi32 uint64
	for i := 0; i < len(b)/4; i++ {
		lo32 += uint32(b[4*i]) | uint32(b[4*i+1])<<8 | uint32(b[4*i+2])<<16 | uint32(b[4*i+3])<<24
		hi32 += uint64(lo32)
	}
	return hi32<<32 | uint64(lo32)
}

func TestFletcher64(t *testing.T) {
	words := func(ws ...uint32) []byte {
		b := make([]byte, 4*len(ws))
		for i, w := range ws {
			binary.LittleEndian.PutUint32(b[4*i:], w)
		}
		return b
	}
	cases := []struct {
		in   []byte
		want uint64
	}{
		{nil, 0},
		{words(1, 2, 3), 10<<32 | 6},
		// lo wraps at 32 bits (0xffffffff+2 = 1); hi is 0xffffffff+1.
		{words(0xffffffff, 2), 1},                 // hi = 1<<32, shifted out of 64 bits
		{append(words(5), 0xff, 0xff), 5<<32 | 5}, // trailing partial word ignored
	}
	for _, c := range cases {
		if got := Fletcher64(c.in); got != c.want {
			t.Errorf("Fletcher64(% x) = %#x, want %#x", c.in, got, c.want)
		}
	}
	big := bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef, 0x01}, 1000)
	if Fletcher64(big) != kernelFletcher(big) {
		t.Error("Fletcher64 disagrees with the kernel transcription")
	}
}

// TestInfoBlockBytes checks every field of the block against the kernel's
// struct nd_pfn_sb layout, built here from the documented offsets.
func TestInfoBlockBytes(t *testing.T) {
	uuid := [16]byte{0x6b, 0x65, 0x65, 0x6c, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	const fsSize = 10<<20 + 123 // not a multiple of 2 MiB on purpose
	b, total, err := Layout(fsSize, Options{UUID: uuid})
	if err != nil {
		t.Fatal(err)
	}
	if total != 14<<20 {
		t.Fatalf("total = %d, want %d (2 MiB info area + fs rounded up to 2 MiB)", total, 14<<20)
	}
	got := b.Marshal()

	want := make([]byte, 4096)
	le := binary.LittleEndian
	copy(want[0:16], "NVDIMM_PFN_INFO\x00") // signature[16]
	copy(want[16:32], uuid[:])              // uuid[16]
	// parent_uuid[16] at 32: zero, matching a label-less namespace
	le.PutUint32(want[48:], 0)                   // flags
	le.PutUint16(want[52:], 1)                   // version_major
	le.PutUint16(want[54:], 4)                   // version_minor
	le.PutUint64(want[56:], 2<<20)               // dataoff
	le.PutUint64(want[64:], (14<<20-2<<20)/4096) // npfns
	le.PutUint32(want[72:], 1)                   // mode = PFN_MODE_RAM
	le.PutUint32(want[76:], 0)                   // start_pad
	le.PutUint32(want[80:], 0)                   // end_trunc
	le.PutUint32(want[84:], 2<<20)               // align
	le.PutUint32(want[88:], 4096)                // page_size
	le.PutUint16(want[92:], 64)                  // page_struct_size
	// padding[3994] at 94..4088 zero; checksum at 4088 over the block with
	// the checksum field zero.
	le.PutUint64(want[4088:], kernelFletcher(want))

	if !bytes.Equal(got, want) {
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("first difference at byte %d: got %#x want %#x", i, got[i], want[i])
			}
		}
	}
	parsed, err := Parse(got)
	if err != nil {
		t.Fatal(err)
	}
	if *parsed != *b {
		t.Fatalf("round trip:\n got %+v\nwant %+v", parsed, b)
	}
}

func TestPMEMModeReservesStructPages(t *testing.T) {
	const fsSize = 1 << 30
	b, total, err := Layout(fsSize, Options{Mode: ModePMEM})
	if err != nil {
		t.Fatal(err)
	}
	pages := uint64(total-8192) / 4096
	need := (8192 + 64*pages + (2<<20 - 1)) / (2 << 20) * (2 << 20)
	if b.DataOff != need || b.Mode != ModePMEM {
		t.Fatalf("dataoff %#x mode %v, want %#x pmem", b.DataOff, b.Mode, need)
	}
	if uint64(total) < b.DataOff+fsSize {
		t.Fatalf("total %d too small", total)
	}
	if _, _, err := Layout(fsSize, Options{Mode: ModePMEM, DataOffset: 2 << 20}); err == nil || !strings.Contains(err.Error(), "pmem mode needs a data offset") {
		t.Fatalf("err = %v", err)
	}
}

func TestWrapAndRead(t *testing.T) {
	dir := t.TempDir()
	fs := filepath.Join(dir, "fs.img")
	data := bytes.Repeat([]byte("keelfs"), 300000) // 1.8 MB
	if err := os.WriteFile(fs, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "dax.img")
	b, err := Wrap(fs, out, Options{})
	if err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(img) != 4<<20 {
		t.Fatalf("image is %d bytes, want 4 MiB", len(img))
	}
	if !bytes.Equal(img[:4096], make([]byte, 4096)) || !bytes.Equal(img[8192:2<<20], make([]byte, 2<<20-8192)) {
		t.Fatal("info area outside the block is not zero")
	}
	if !bytes.Equal(img[2<<20:2<<20+len(data)], data) || !bytes.Equal(img[2<<20+len(data):], make([]byte, len(img)-2<<20-len(data))) {
		t.Fatal("filesystem not at 2 MiB or tail not zero")
	}
	r, err := ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if *r != *b || r.FSOffset() != 2<<20 {
		t.Fatalf("read back %+v, want %+v", r, b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Fatalf("leftover files: %v", ents)
	}
}

func TestReadRejects(t *testing.T) {
	good, total, err := Layout(4<<20, Options{})
	if err != nil {
		t.Fatal(err)
	}
	image := func(mutate func([]byte)) []byte {
		img := make([]byte, total)
		copy(img[InfoOffset:], good.Marshal())
		mutate(img[InfoOffset : InfoOffset+InfoSize])
		return img
	}
	resum := func(blk []byte) {
		clear(blk[4088:])
		binary.LittleEndian.PutUint64(blk[4088:], kernelFletcher(blk))
	}
	cases := []struct {
		name string
		img  []byte
		want error
		text string
	}{
		{"plain fs", make([]byte, total), ErrNoInfoBlock, "signature"},
		{"truncated", make([]byte, 5000), ErrNoInfoBlock, "only 5000 bytes"},
		{"dax signature", image(func(b []byte) { copy(b, "NVDIMM_DAX_INFO\x00") }), ErrNoInfoBlock, "NVDIMM_DAX_INFO"},
		{"bit flip", image(func(b []byte) { b[100] ^= 1 }), ErrChecksum, "stored"},
		{"bad mode", image(func(b []byte) { b[72] = 7; resum(b) }), ErrInvalid, "mode 7"},
		{"dataoff beyond", image(func(b []byte) { binary.LittleEndian.PutUint64(b[56:], 1<<40); resum(b) }), ErrInvalid, "beyond"},
		{"dataoff unaligned", image(func(b []byte) { binary.LittleEndian.PutUint64(b[56:], 3<<20); resum(b) }), ErrInvalid, "not aligned"},
		{"dataoff in reserve", image(func(b []byte) { binary.LittleEndian.PutUint64(b[56:], 4096); resum(b) }), ErrInvalid, "at least"},
		{"pmem too small", image(func(b []byte) { b[72] = 2; binary.LittleEndian.PutUint64(b[64:], 1<<20); resum(b) }), ErrInvalid, "pmem mode needs"},
		{"small struct page", image(func(b []byte) { b[72] = 2; b[92] = 40; resum(b) }), ErrInvalid, "struct page size"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Read(bytes.NewReader(c.img), int64(len(c.img)))
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.text) {
				t.Fatalf("err = %v, want %v containing %q", err, c.want, c.text)
			}
		})
	}
}

// TestOldMinorVersionDefaults mirrors nd_pfn_validate: fields newer than
// the block's minor version take the kernel's defaults (Kata's nsdax tool
// writes version 0.2 blocks with no page size fields).
func TestOldMinorVersionDefaults(t *testing.T) {
	blk := make([]byte, 4096)
	copy(blk, Signature[:])
	le := binary.LittleEndian
	le.PutUint16(blk[54:], 2)
	le.PutUint64(blk[56:], 2<<20)
	le.PutUint32(blk[72:], 1)
	le.PutUint32(blk[84:], 2<<20)
	le.PutUint64(blk[4088:], kernelFletcher(blk))
	b, err := Parse(blk)
	if err != nil {
		t.Fatal(err)
	}
	if b.PageSize != 4096 || b.PageStructSize != 64 || b.Align != 2<<20 {
		t.Fatalf("defaults not applied: %+v", b)
	}
	le.PutUint16(blk[54:], 1)
	clear(blk[4088:])
	le.PutUint64(blk[4088:], kernelFletcher(blk))
	if b, err = Parse(blk); err != nil || b.Align != 2<<20 {
		t.Fatalf("minor 1: align %#x, %v (want 1<<ilog2(dataoff))", b.Align, err)
	}
}

func TestWrapErrorsLeaveNothing(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	for _, c := range []struct{ in, out, text string }{
		{filepath.Join(dir, "missing"), filepath.Join(dir, "o.img"), "unable to open"},
		{empty, filepath.Join(dir, "o.img"), "must be positive"},
		{dir, filepath.Join(dir, "o.img"), "not a regular file"},
		{empty, filepath.Join(dir, "nodir/o.img"), "unable to create"},
	} {
		_, err := Wrap(c.in, c.out, Options{})
		if err == nil || !strings.Contains(err.Error(), c.text) {
			t.Errorf("Wrap(%s): err = %v, want %q", c.in, err, c.text)
		}
		if _, err := os.Stat(c.out); !os.IsNotExist(err) {
			t.Errorf("%s exists after failure", c.out)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("leftover files: %v", ents)
	}
}

func FuzzParse(f *testing.F) {
	b, _, _ := Layout(8<<20, Options{})
	f.Add(b.Marshal())
	f.Add(make([]byte, 4096))
	f.Fuzz(func(t *testing.T, data []byte) {
		blk, err := Parse(data)
		if err != nil {
			return
		}
		if blk.DataOff < reserveEnd || (blk.Mode != ModeRAM && blk.Mode != ModePMEM) {
			t.Fatalf("accepted invalid block %+v", blk)
		}
	})
}

// TestWrapKeepsHoles: a mostly empty filesystem image stays sparse and its
// data lands at the right offsets.
func TestWrapKeepsHoles(t *testing.T) {
	dir := t.TempDir()
	fs := filepath.Join(dir, "fs.img")
	f, _ := os.Create(fs)
	f.WriteAt([]byte("head"), 0)
	f.WriteAt([]byte("tail"), 64<<20-4)
	f.Close()
	out := filepath.Join(dir, "dax.img")
	if _, err := Wrap(fs, out, Options{}); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(out)
	if st.Size() != 66<<20 {
		t.Fatalf("size %d", st.Size())
	}
	if blocks := st.Sys().(*syscall.Stat_t).Blocks * 512; blocks > 8<<20 {
		t.Errorf("wrapped image uses %d bytes on disk; holes not kept", blocks)
	}
	img, _ := os.ReadFile(out)
	if string(img[2<<20:2<<20+4]) != "head" || string(img[66<<20-4:]) != "tail" {
		t.Fatal("data not at the expected offsets")
	}
}
