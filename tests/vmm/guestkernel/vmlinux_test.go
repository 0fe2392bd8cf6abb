package guestkernel

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// pvhNote is an ELF note owned by "Xen" of type XEN_ELFNOTE_PHYS32_ENTRY.
func pvhNote() []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, []uint32{4, 4, xenElfnotePhys32Entry})
	b.WriteString("Xen\x00")
	b.Write([]byte{0, 0, 0, 1})
	return b.Bytes()
}

// fakeBzImage wraps payload the way the boot protocol describes: one setup
// sector after the boot sector, then payload at payload_offset.
func fakeBzImage(payload []byte) []byte {
	const start, off = 2 * 512, 16
	img := make([]byte, start+off, start+off+len(payload)+4)
	img[offSetupSects] = 1
	copy(img[offHeaderMagic:], "HdrS")
	binary.LittleEndian.PutUint32(img[offPayloadOffset:], off)
	binary.LittleEndian.PutUint32(img[offPayloadLength:], uint32(len(payload)))
	img = append(img, payload...)
	// The real image ends with the uncompressed size; decompressors must
	// not trip over it.
	return append(img, 1, 2, 3, 4)
}

func xzCompress(t *testing.T, b []byte) []byte {
	t.Helper()
	cmd := exec.Command("xz", "--check=crc32", "-c")
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.Output()
	if err != nil {
		t.Skipf("xz unavailable: %v", err)
	}
	return out
}

func TestVmlinuxExtraction(t *testing.T) {
	elfWithNote := fakeELF(t, 2, ".note.Xen", 7, pvhNote())
	for name, compress := range map[string]func(*testing.T, []byte) []byte{"gzip": gz, "xz": xzCompress} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			k := &Kernel{Version: "9.9-test", VmlinuzPath: filepath.Join(dir, "vmlinuz-9.9-test")}
			writeFile(t, k.VmlinuzPath, fakeBzImage(compress(t, elfWithNote)))
			p, err := k.VmlinuxPath(context.Background())
			must(t, err)
			if p != filepath.Join(dir, "vmlinux-9.9-test") {
				t.Fatalf("path %s", p)
			}
			got, err := os.ReadFile(p)
			must(t, err)
			if !bytes.Equal(got, elfWithNote) {
				t.Fatal("extracted kernel differs from the packed ELF")
			}
			// A second call reuses the file instead of extracting again.
			must(t, os.Remove(k.VmlinuzPath))
			if p2, err := k.VmlinuxPath(context.Background()); err != nil || p2 != p {
				t.Fatalf("reuse: %s, %v", p2, err)
			}
		})
	}
}

func TestVmlinuxRejectsBadImages(t *testing.T) {
	noNote := fakeELF(t, 2, ".note.other", 7, []byte{4, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 'G', 'N', 'U', 0})
	relocatable := fakeELF(t, 1, ".note.Xen", 7, pvhNote())
	truncated := fakeBzImage(gz(t, noNote))
	binary.LittleEndian.PutUint32(truncated[offPayloadLength:], 1<<30)
	for name, tc := range map[string]struct {
		img  []byte
		want string
	}{
		"not bzImage":     {[]byte("MZ just some bytes"), "not a bzImage"},
		"payload outside": {truncated, "outside"},
		"lz4 payload":     {fakeBzImage([]byte{0x02, 0x21, 0x4c, 0x18, 0, 0}), "unsupported kernel compression"},
		"no PVH note":     {fakeBzImage(gz(t, noNote)), "no PVH entry note"},
		"not executable":  {fakeBzImage(gz(t, relocatable)), "not an x86-64 ELF executable"},
		"corrupt gzip":    {fakeBzImage([]byte{0x1f, 0x8b, 8, 0, 0, 0}), ""},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			k := &Kernel{Version: "v", VmlinuzPath: filepath.Join(dir, "vmlinuz-v")}
			writeFile(t, k.VmlinuzPath, tc.img)
			_, err := k.VmlinuxPath(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if e.Name() != "vmlinuz-v" && e.Name() != ".vmlinux.lock" {
					t.Errorf("left behind %s", e.Name())
				}
			}
		})
	}
}
