package guestkernel

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Why an uncompressed kernel: Debian's bzImage is XZ-compressed, and under
// TCG the guest's self-decompression dominates boot (measured here: 30-48 s
// to the first userspace line with the bzImage, 13-17 s with the ELF, same
// load). QEMU boots an ELF vmlinux directly through the PVH entry point
// (CONFIG_PVH=y in Debian's kernel), skipping decompression entirely.

// bzImage header fields (Documentation/x86/boot.rst).
const (
	offSetupSects    = 0x1f1
	offHeaderMagic   = 0x202 // "HdrS"
	offPayloadOffset = 0x248
	offPayloadLength = 0x24c
	minBzImageHeader = 0x250
)

// xenElfnotePhys32Entry is the ELF note (owner "Xen") carrying the PVH
// 32-bit entry point that QEMU needs to boot an ELF kernel.
const xenElfnotePhys32Entry = 18

// VmlinuxPath returns an uncompressed, PVH-bootable ELF kernel next to
// VmlinuzPath ("boot/vmlinux-<Version>"), extracting it from the bzImage on
// first use. Pass it to QEMU's -kernel instead of VmlinuzPath for a much
// faster boot under TCG. Concurrent callers are serialised by a lock file.
func (k *Kernel) VmlinuxPath(ctx context.Context) (string, error) {
	dst := filepath.Join(filepath.Dir(k.VmlinuzPath), "vmlinux-"+k.Version)
	if hasPVHNote(dst) == nil {
		return dst, nil
	}
	unlock, err := lockFile(ctx, filepath.Join(filepath.Dir(dst), ".vmlinux.lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if hasPVHNote(dst) == nil {
		return dst, nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".vmlinux-")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	err = extractVmlinux(ctx, k.VmlinuzPath, tmp)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	if err := hasPVHNote(tmp.Name()); err != nil {
		return "", fmt.Errorf("kernel extracted from %s cannot be booted directly: %w", k.VmlinuzPath, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return "", err
	}
	return dst, nil
}

// extractVmlinux writes the decompressed payload of a bzImage to out.
func extractVmlinux(ctx context.Context, bzImage string, out io.Writer) error {
	b, err := os.ReadFile(bzImage)
	if err != nil {
		return err
	}
	payload, err := bzPayload(b)
	if err != nil {
		return fmt.Errorf("%s: %w", bzImage, err)
	}
	r, err := decompress(ctx, payload)
	if err != nil {
		return fmt.Errorf("%s: %w", bzImage, err)
	}
	if _, err := io.Copy(out, r); err != nil {
		r.Close()
		return fmt.Errorf("%s: decompressing payload: %w", bzImage, err)
	}
	if err := r.Close(); err != nil {
		return fmt.Errorf("%s: decompressing payload: %w", bzImage, err)
	}
	return nil
}

// bzPayload returns the compressed kernel inside a bzImage, located by the
// boot protocol's payload_offset/payload_length (protocol >= 2.08).
func bzPayload(b []byte) ([]byte, error) {
	if len(b) < minBzImageHeader || string(b[offHeaderMagic:offHeaderMagic+4]) != "HdrS" {
		return nil, errors.New("not a bzImage (no HdrS header)")
	}
	setup := int(b[offSetupSects])
	if setup == 0 {
		setup = 4 // boot protocol: 0 means 4
	}
	start := (setup + 1) * 512
	off := int(binary.LittleEndian.Uint32(b[offPayloadOffset:]))
	n := int(binary.LittleEndian.Uint32(b[offPayloadLength:]))
	if n == 0 || start+off < start || start+off+n > len(b) || start+off+n < start {
		return nil, fmt.Errorf("bzImage payload %d+%d+%d outside the %d-byte file", start, off, n, len(b))
	}
	return b[start+off : start+off+n], nil
}

// decompress recognises the payload format by magic. The kernel appends the
// uncompressed size after the stream, so tools are told to stop at the end
// of the first stream.
func decompress(ctx context.Context, payload []byte) (io.ReadCloser, error) {
	switch {
	case bytes.HasPrefix(payload, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		f, err := payloadFile(payload)
		if err != nil {
			return nil, err
		}
		return toolReader(ctx, f, "xz", "-dc", "--single-stream")
	case bytes.HasPrefix(payload, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		f, err := payloadFile(payload)
		if err != nil {
			return nil, err
		}
		return toolReader(ctx, f, "zstd", "-dcq")
	case bytes.HasPrefix(payload, []byte{0x1f, 0x8b}):
		f, err := payloadFile(payload)
		if err != nil {
			return nil, err
		}
		return gzipReader(f)
	}
	return nil, fmt.Errorf("unsupported kernel compression (magic % x)", payload[:min(6, len(payload))])
}

// payloadFile returns an unlinked temporary file holding payload, rewound,
// as the decompressors read from a file.
func payloadFile(payload []byte) (*os.File, error) {
	f, err := os.CreateTemp("", "keel-bzpayload-")
	if err != nil {
		return nil, err
	}
	_ = os.Remove(f.Name())
	if _, err := f.Write(payload); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// hasPVHNote checks that p is an ELF executable with the PVH entry note.
func hasPVHNote(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC || f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("%s is not an x86-64 ELF executable", p)
	}
	var notes [][]byte
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_NOTE {
			b, err := io.ReadAll(prog.Open())
			if err != nil {
				return err
			}
			notes = append(notes, b)
		}
	}
	for _, s := range f.Sections {
		if s.Type == elf.SHT_NOTE {
			b, err := s.Data()
			if err != nil {
				return err
			}
			notes = append(notes, b)
		}
	}
	for _, n := range notes {
		if hasNote(n, "Xen", xenElfnotePhys32Entry) {
			return nil
		}
	}
	return fmt.Errorf("%s has no PVH entry note (CONFIG_PVH)", p)
}

// hasNote walks ELF notes (namesz, descsz, type, name, desc; 4-byte
// aligned) looking for owner/type.
func hasNote(b []byte, owner string, typ uint32) bool {
	for len(b) >= 12 {
		namesz := binary.LittleEndian.Uint32(b[0:])
		descsz := binary.LittleEndian.Uint32(b[4:])
		t := binary.LittleEndian.Uint32(b[8:])
		b = b[12:]
		nameLen := int(align4(uint64(namesz)))
		descLen := int(align4(uint64(descsz)))
		if uint64(nameLen) > uint64(len(b)) || uint64(descLen) > uint64(len(b)-nameLen) {
			return false
		}
		name := string(bytes.TrimRight(b[:namesz], "\x00"))
		if name == owner && t == typ {
			return true
		}
		b = b[nameLen+descLen:]
	}
	return false
}

func align4(n uint64) uint64 { return (n + 3) &^ 3 }
