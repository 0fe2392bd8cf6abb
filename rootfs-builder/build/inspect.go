package build

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/keelvm/keel/rootfs-builder/manifest"
	"github.com/keelvm/keel/rootfs-builder/pfn"
)

// Report is what Inspect found.
type Report struct {
	Path     string
	Size     int64
	Manifest *manifest.Manifest // nil when there is no manifest
	PFN      *pfn.InfoBlock     // nil when the file has no info block
	Format   string             // "dax-image", "image", "initrd-gzip", ...
}

// Inspect reads an artifact and its manifest and cross-checks them: the
// digest must match, and an image the manifest calls DAX must carry a
// valid PFN info block that agrees with the recorded layout.
func Inspect(p string) (*Report, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		m, err := manifest.Read(p)
		if err != nil {
			return nil, fmt.Errorf("no manifest for directory %s: %w", p, err)
		}
		return &Report{Path: p, Manifest: m, Format: "dir"}, nil
	}
	r := &Report{Path: p, Size: st.Size()}
	if m, err := manifest.Read(p); err == nil {
		r.Manifest = m
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	head := make([]byte, 6)
	io.ReadFull(f, head)
	switch {
	case string(head) == "070701":
		r.Format = "initrd-none"
	case head[0] == 0x1f && head[1] == 0x8b:
		r.Format = "initrd-gzip"
	case string(head[:4]) == "\x28\xb5\x2f\xfd":
		r.Format = "initrd-zstd"
	default:
		r.Format = "image"
		blk, err := pfn.Read(f, st.Size())
		switch {
		case err == nil:
			r.PFN, r.Format = blk, "dax-image"
		case errors.Is(err, pfn.ErrNoInfoBlock):
			if r.Manifest != nil && r.Manifest.DAX != nil {
				return r, fmt.Errorf("manifest says DAX but %s has no PFN info block: %w", p, err)
			}
		default:
			return r, fmt.Errorf("invalid DAX header: %w", err)
		}
	}
	if m := r.Manifest; m != nil {
		sum, size, err := manifest.FileDigest(p)
		if err != nil {
			return r, err
		}
		if sum != m.SHA256 || size != m.Size {
			return r, fmt.Errorf("%s does not match its manifest (sha256 %s, manifest %s)", p, sum, m.SHA256)
		}
		if m.DAX != nil && r.PFN != nil {
			if got := DAXInfo(r.PFN); *got != *m.DAX {
				return r, fmt.Errorf("PFN info block %+v disagrees with manifest %+v", *got, *m.DAX)
			}
		}
	}
	return r, nil
}
