// Package ocitest generates container images for rootfs-builder's tests:
// layer tars from headers, OCI image layouts and docker save archives with
// correct digests, configs and diff_ids (which tests then tamper with).
// Nothing is downloaded.
package ocitest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// Entry is one tar member; Body is the content of a regular file.
type Entry struct {
	Hdr  tar.Header
	Body string
}

// File, Dir, Symlink and Hardlink build common entries.
func File(name, body string, mode int64) Entry {
	return Entry{Hdr: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(body))}, Body: body}
}
func Dir(name string, mode int64) Entry {
	return Entry{Hdr: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: mode}}
}
func Symlink(name, target string) Entry {
	return Entry{Hdr: tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}}
}
func Hardlink(name, target string) Entry {
	return Entry{Hdr: tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target}}
}

// Tar returns an uncompressed layer tar (PAX format when an entry carries
// PAX records, e.g. SCHILY.xattr.*).
func Tar(ents ...Entry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := e.Hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.Body))
		}
		if len(h.PAXRecords) > 0 {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&h); err != nil {
			panic(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(e.Body)); err != nil {
				panic(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// Gzip compresses b.
func Gzip(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

// Digest is "sha256:<hex>" of b.
func Digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// Image is what WriteLayout and WriteDockerSave produce.
type Image struct {
	// Layers are the uncompressed layer tars.
	Layers [][]byte
	// Gzip stores the layers gzip-compressed.
	Gzip bool
	// OS and Arch of the config and the index entry (default linux and
	// GOARCH); IndexArch overrides the index entry's architecture only.
	OS, Arch, IndexArch string
	// DiffIDs, when set, replace the config's (correct) diff_ids.
	DiffIDs []string
}

// Written names the files of a written image (relative to its layout dir,
// or member names inside a docker save archive).
type Written struct {
	Manifest string
	Config   string
	Layers   []string
}

func (im Image) platform() (string, string, string) {
	osName, arch := im.OS, im.Arch
	if osName == "" {
		osName = "linux"
	}
	if arch == "" {
		arch = runtime.GOARCH
	}
	idx := im.IndexArch
	if idx == "" {
		idx = arch
	}
	return osName, arch, idx
}

func (im Image) config() []byte {
	osName, arch, _ := im.platform()
	var diffIDs []string
	for _, l := range im.Layers {
		diffIDs = append(diffIDs, Digest(l))
	}
	if im.DiffIDs != nil {
		diffIDs = im.DiffIDs
	}
	b, _ := json.Marshal(map[string]any{"architecture": arch, "os": osName,
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs}})
	return b
}

func (im Image) blobs() [][]byte {
	var out [][]byte
	for _, l := range im.Layers {
		if im.Gzip {
			l = Gzip(l)
		}
		out = append(out, l)
	}
	return out
}

// WriteLayout writes im as an OCI image layout in dir (created).
func WriteLayout(dir string, im Image) (Written, error) {
	var w Written
	if err := os.MkdirAll(filepath.Join(dir, "blobs/sha256"), 0o755); err != nil {
		return w, err
	}
	put := func(b []byte) (string, string, error) {
		d := Digest(b)
		name := "blobs/sha256/" + strings.TrimPrefix(d, "sha256:")
		return d, name, os.WriteFile(filepath.Join(dir, name), b, 0o644)
	}
	mt := "application/vnd.oci.image.layer.v1.tar"
	if im.Gzip {
		mt += "+gzip"
	}
	var ls []map[string]any
	for _, b := range im.blobs() {
		d, name, err := put(b)
		if err != nil {
			return w, err
		}
		w.Layers = append(w.Layers, name)
		ls = append(ls, map[string]any{"mediaType": mt, "digest": d, "size": len(b)})
	}
	cfg := im.config()
	cd, cname, err := put(cfg)
	if err != nil {
		return w, err
	}
	w.Config = cname
	man, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(cfg)}, "layers": ls})
	md, mname, err := put(man)
	if err != nil {
		return w, err
	}
	w.Manifest = mname
	osName, _, idxArch := im.platform()
	idx, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []any{map[string]any{
		"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": len(man),
		"platform": map[string]any{"architecture": idxArch, "os": osName}}}})
	if err := os.WriteFile(filepath.Join(dir, "index.json"), idx, 0o644); err != nil {
		return w, err
	}
	return w, os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
}

// WriteDockerSave writes im as a `docker save` tarball at p (legacy layout:
// <id>/layer.tar and <config-hex>.json). Replace, when set, swaps a
// member's content after the digests are computed (for tamper tests).
func WriteDockerSave(p string, im Image, replace map[string][]byte) (Written, error) {
	var w Written
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, b []byte) {
		if r, ok := replace[name]; ok {
			b = r
		}
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg})
		tw.Write(b)
	}
	for i, b := range im.blobs() {
		name := strings.Repeat(string(rune('a'+i)), 64) + "/layer.tar"
		w.Layers = append(w.Layers, name)
		add(name, b)
	}
	cfg := im.config()
	w.Config = strings.TrimPrefix(Digest(cfg), "sha256:") + ".json"
	add(w.Config, cfg)
	man, _ := json.Marshal([]map[string]any{{"Config": w.Config, "RepoTags": []string{"t:1"}, "Layers": w.Layers}})
	w.Manifest = "manifest.json"
	add(w.Manifest, man)
	tw.Close()
	return w, os.WriteFile(p, buf.Bytes(), 0o644)
}
