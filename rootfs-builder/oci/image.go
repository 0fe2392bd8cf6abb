package oci

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strings"
)

// Layer is one layer of an image, in application order.
type Layer struct {
	// Name is where the layer lives inside the layout or tarball.
	Name string
	// Digest is "sha256:..." when the format records one; it is verified
	// while the layer is read.
	Digest string
}

// Image is an opened image source.
type Image struct {
	// Source is the path given to Open; Format is "oci-layout" or
	// "docker-save" (or "oci-archive" for an OCI layout inside a tar).
	Source string
	Format string
	Layers []Layer
	open   func(name string) (io.ReadCloser, error)
}

// maxMetadata bounds JSON documents read from an image.
const maxMetadata = 4 << 20

// Open inspects path, an OCI image layout directory or a tarball (docker
// save, or an OCI layout archived with tar), and lists its layers.
func Open(p string) (*Image, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	img := &Image{Source: p}
	if st.IsDir() {
		img.open = func(name string) (io.ReadCloser, error) {
			c, err := CleanName(name)
			if err != nil {
				return nil, err
			}
			return os.Open(filepath.Join(p, filepath.FromSlash(c)))
		}
	} else {
		img.open = func(name string) (io.ReadCloser, error) { return tarMember(p, name) }
	}
	if rc, err := img.open("index.json"); err == nil {
		rc.Close()
		if err := img.loadOCI(); err != nil {
			return nil, err
		}
		img.Format = "oci-layout"
		if !st.IsDir() {
			img.Format = "oci-archive"
		}
		return img, nil
	}
	if rc, err := img.open("manifest.json"); err == nil {
		rc.Close()
		if err := img.loadDocker(); err != nil {
			return nil, err
		}
		img.Format = "docker-save"
		return img, nil
	}
	return nil, fmt.Errorf("image %s: neither an OCI layout (index.json) nor a docker save archive (manifest.json)", p)
}

// tarMember opens the member name of the tarball p by scanning it.
func tarMember(p, name string) (io.ReadCloser, error) {
	want, err := CleanName(name)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	tr := tar.NewReader(bufio.NewReader(f))
	for {
		hdr, err := tr.Next()
		if err != nil {
			f.Close()
			if err == io.EOF {
				return nil, fmt.Errorf("%s: %w in archive", name, os.ErrNotExist)
			}
			return nil, fmt.Errorf("reading %s: %w", p, err)
		}
		if c, err := CleanName(hdr.Name); err == nil && c == want && hdr.Typeflag == tar.TypeReg {
			return struct {
				io.Reader
				io.Closer
			}{tr, f}, nil
		}
	}
}

func (img *Image) readJSON(name string, v any) error {
	rc, err := img.open(name)
	if err != nil {
		return err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxMetadata+1))
	if err != nil {
		return err
	}
	if len(data) > maxMetadata {
		return fmt.Errorf("%s is larger than %d bytes", name, maxMetadata)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("parsing %s: %w", name, err)
	}
	return nil
}

type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Platform  *struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
	} `json:"platform"`
}

type indexOrManifest struct {
	MediaType string       `json:"mediaType"`
	Manifests []descriptor `json:"manifests"`
	Layers    []descriptor `json:"layers"`
}

func blobName(digest string) (string, error) {
	alg, hexpart, ok := strings.Cut(digest, ":")
	if !ok || alg != "sha256" || len(hexpart) != 64 || strings.Trim(hexpart, "0123456789abcdef") != "" {
		return "", fmt.Errorf("unsupported or malformed digest %q", digest)
	}
	return path.Join("blobs", alg, hexpart), nil
}

// loadOCI follows index.json to an image manifest, choosing linux on the
// host architecture when the index lists several.
func (img *Image) loadOCI() error {
	var doc indexOrManifest
	if err := img.readJSON("index.json", &doc); err != nil {
		return err
	}
	for depth := 0; ; depth++ {
		if depth > 4 {
			return errors.New("image index nesting is too deep")
		}
		if len(doc.Layers) > 0 || len(doc.Manifests) == 0 && doc.MediaType != "" {
			break
		}
		if len(doc.Manifests) == 0 {
			return errors.New("index.json lists no manifests")
		}
		pick := doc.Manifests[0]
		for _, m := range doc.Manifests {
			if m.Platform != nil && m.Platform.OS == "linux" && m.Platform.Architecture == runtime.GOARCH {
				pick = m
				break
			}
		}
		name, err := blobName(pick.Digest)
		if err != nil {
			return err
		}
		doc = indexOrManifest{}
		if err := img.readJSON(name, &doc); err != nil {
			return err
		}
	}
	for _, l := range doc.Layers {
		name, err := blobName(l.Digest)
		if err != nil {
			return err
		}
		img.Layers = append(img.Layers, Layer{Name: name, Digest: l.Digest})
	}
	if len(img.Layers) == 0 {
		return errors.New("image manifest has no layers")
	}
	return nil
}

func (img *Image) loadDocker() error {
	var m []struct {
		Layers []string `json:"Layers"`
	}
	if err := img.readJSON("manifest.json", &m); err != nil {
		return err
	}
	if len(m) == 0 || len(m[0].Layers) == 0 {
		return errors.New("manifest.json lists no layers")
	}
	if len(m) > 1 {
		return fmt.Errorf("archive holds %d images; save exactly one", len(m))
	}
	for _, l := range m[0].Layers {
		d := ""
		// Newer docker stores layers as blobs/sha256/<hex>.
		if strings.HasPrefix(l, "blobs/sha256/") {
			d = "sha256:" + strings.TrimPrefix(l, "blobs/sha256/")
		}
		img.Layers = append(img.Layers, Layer{Name: l, Digest: d})
	}
	return nil
}

// digestReader verifies a layer's digest when it has been read to EOF.
type digestReader struct {
	r    io.Reader
	h    hash.Hash
	want string
}

func (d *digestReader) Read(b []byte) (int, error) {
	n, err := d.r.Read(b)
	d.h.Write(b[:n])
	if err == io.EOF && d.want != "" {
		if got := "sha256:" + hex.EncodeToString(d.h.Sum(nil)); got != d.want {
			return n, fmt.Errorf("layer digest mismatch: got %s, want %s", got, d.want)
		}
	}
	return n, err
}

// Unpack applies all layers, in order, to dir.
func (img *Image) Unpack(dir string, opts ApplyOptions, progress func(string, ...any)) error {
	for i, l := range img.Layers {
		if progress != nil {
			progress("applying layer %d/%d %s", i+1, len(img.Layers), l.Name)
		}
		if err := img.applyOne(dir, l, opts); err != nil {
			return fmt.Errorf("layer %d (%s): %w", i+1, l.Name, err)
		}
	}
	return nil
}

func (img *Image) applyOne(dir string, l Layer, opts ApplyOptions) error {
	rc, err := img.open(l.Name)
	if err != nil {
		return err
	}
	defer rc.Close()
	dr := &digestReader{r: rc, h: sha256.New(), want: l.Digest}
	br := bufio.NewReaderSize(dr, 1<<16)
	magic, _ := br.Peek(4)
	var r io.Reader = br
	var wait func() error
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return err
		}
		r = zr
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		cmd := exec.Command("zstd", "-dc")
		cmd.Stdin = br
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("zstd layer needs the zstd binary: %w", err)
		}
		r, wait = out, cmd.Wait
	}
	if err := ApplyLayer(dir, r, opts); err != nil {
		if wait != nil {
			io.Copy(io.Discard, r)
			wait()
		}
		return err
	}
	// Drain so the digest covers the whole blob (tar padding included).
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	if wait != nil {
		if err := wait(); err != nil {
			return fmt.Errorf("zstd: %w", err)
		}
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		return err
	}
	return nil
}
