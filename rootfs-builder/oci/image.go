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
	"time"
)

// Layer is one layer of an image, in application order.
type Layer struct {
	// Name is where the layer lives inside the layout or tarball.
	Name string
	// Digest is "sha256:..." when the format records one; it is verified
	// while the layer is read.
	Digest string
	// DiffID is the digest of the uncompressed tar from the image config's
	// rootfs.diff_ids; it is verified after decompression.
	DiffID string
}

// Platform selects a manifest from a multi-platform index.
type Platform struct {
	OS, Architecture, Variant string
}

// DefaultPlatform is the build machine's: linux on GOARCH.
func DefaultPlatform() Platform { return Platform{OS: "linux", Architecture: runtime.GOARCH} }

// ParsePlatform parses "os/arch[/variant]" (e.g. linux/arm64/v8).
func ParsePlatform(s string) (Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return Platform{}, fmt.Errorf("invalid platform %q (want os/arch[/variant], e.g. linux/amd64)", s)
	}
	p := Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

func (p Platform) String() string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// ErrIntegrity marks a blob whose content does not match its digest.
var ErrIntegrity = errors.New("digest mismatch")

// Image is an opened image source.
type Image struct {
	// Source is the path given to Open; Format is "oci-layout" or
	// "docker-save" (or "oci-archive" for an OCI layout inside a tar).
	Source string
	Format string
	Layers []Layer
	// Platform is the platform of the chosen manifest, from its config.
	Platform Platform
	// NewestMTime is the newest entry mtime (Unix seconds) Unpack saw.
	NewestMTime int64
	want        Platform
	open        func(name string) (io.ReadCloser, error)
}

// maxMetadata bounds JSON documents read from an image.
const maxMetadata = 4 << 20

// Open inspects path, an OCI image layout directory or a tarball (docker
// save, or an OCI layout archived with tar), chooses the manifest for
// platform (zero: DefaultPlatform), verifies the manifest and config
// against their digests and lists its layers.
func Open(p string, platform Platform) (*Image, error) {
	if platform.OS == "" {
		platform = DefaultPlatform()
	}
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	img := &Image{Source: p, want: platform}
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

// readJSON reads and parses the metadata document name. When digest is
// set the bytes must hash to it.
func (img *Image) readJSON(name, digest string, v any) error {
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
	if digest != "" {
		sum := sha256.Sum256(data)
		if got := "sha256:" + hex.EncodeToString(sum[:]); got != digest {
			return fmt.Errorf("%w: %s: got %s, want %s", ErrIntegrity, name, got, digest)
		}
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
		Variant      string `json:"variant"`
	} `json:"platform"`
}

type indexOrManifest struct {
	MediaType string       `json:"mediaType"`
	Manifests []descriptor `json:"manifests"`
	Config    descriptor   `json:"config"`
	Layers    []descriptor `json:"layers"`
}

// imageConfig is the part of an image config (OCI or Docker) checked here.
type imageConfig struct {
	OS           string `json:"os"`
	Architecture string `json:"architecture"`
	Variant      string `json:"variant"`
	RootFS       struct {
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

func blobName(digest string) (string, error) {
	alg, hexpart, ok := strings.Cut(digest, ":")
	if !ok || alg != "sha256" || len(hexpart) != 64 || strings.Trim(hexpart, "0123456789abcdef") != "" {
		return "", fmt.Errorf("unsupported or malformed digest %q", digest)
	}
	return path.Join("blobs", alg, hexpart), nil
}

// loadOCI follows index.json to the image manifest for the wanted
// platform, verifying every blob it reads against its digest.
func (img *Image) loadOCI() error {
	var doc indexOrManifest
	if err := img.readJSON("index.json", "", &doc); err != nil {
		return err
	}
	where := "index.json"
	for depth := 0; ; depth++ {
		if depth > 4 {
			return errors.New("image index nesting is too deep")
		}
		if len(doc.Layers) > 0 || len(doc.Manifests) == 0 && doc.MediaType != "" && !strings.Contains(doc.MediaType, "index") {
			break
		}
		if len(doc.Manifests) == 0 {
			return fmt.Errorf("%s lists no manifests", where)
		}
		pick, err := img.pickManifest(where, doc.Manifests)
		if err != nil {
			return err
		}
		name, err := blobName(pick.Digest)
		if err != nil {
			return err
		}
		doc = indexOrManifest{}
		if err := img.readJSON(name, pick.Digest, &doc); err != nil {
			return err
		}
		where = name
	}
	if len(doc.Layers) == 0 {
		return errors.New("image manifest has no layers")
	}
	cfgName, err := blobName(doc.Config.Digest)
	if err != nil {
		return fmt.Errorf("image manifest %s: config: %w", where, err)
	}
	var cfg imageConfig
	if err := img.readJSON(cfgName, doc.Config.Digest, &cfg); err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	if err := img.checkConfig(cfgName, &cfg, len(doc.Layers)); err != nil {
		return err
	}
	for i, l := range doc.Layers {
		name, err := blobName(l.Digest)
		if err != nil {
			return err
		}
		img.Layers = append(img.Layers, Layer{Name: name, Digest: l.Digest, DiffID: cfg.RootFS.DiffIDs[i]})
	}
	return nil
}

// pickManifest chooses the index entry for the wanted platform. Entries
// without a platform (single-image layouts, as umoci and skopeo write) are
// candidates too; the config's own platform is checked afterwards.
func (img *Image) pickManifest(where string, ms []descriptor) (descriptor, error) {
	var seen []string
	for _, m := range ms {
		if m.Platform == nil {
			continue
		}
		p := Platform{OS: m.Platform.OS, Architecture: m.Platform.Architecture, Variant: m.Platform.Variant}
		seen = append(seen, p.String())
		if p.OS == img.want.OS && p.Architecture == img.want.Architecture && (img.want.Variant == "" || p.Variant == img.want.Variant) {
			return m, nil
		}
	}
	for _, m := range ms {
		if m.Platform == nil {
			return m, nil
		}
	}
	return descriptor{}, fmt.Errorf("%s has no manifest for platform %s (it has %s); choose one with --platform", where, img.want, strings.Join(seen, ", "))
}

// checkConfig refuses a config for another platform, or one whose
// diff_ids do not match the layer count.
func (img *Image) checkConfig(name string, cfg *imageConfig, layers int) error {
	got := Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}
	if got.OS != img.want.OS || got.Architecture != img.want.Architecture || img.want.Variant != "" && got.Variant != img.want.Variant {
		return fmt.Errorf("image config %s is for platform %s, not %s; choose one with --platform", name, got, img.want)
	}
	img.Platform = got
	if len(cfg.RootFS.DiffIDs) != layers {
		return fmt.Errorf("image config %s lists %d diff_ids for %d layers", name, len(cfg.RootFS.DiffIDs), layers)
	}
	for _, d := range cfg.RootFS.DiffIDs {
		if _, err := blobName(d); err != nil {
			return fmt.Errorf("image config %s: diff_id: %w", name, err)
		}
	}
	return nil
}

// loadDocker reads a docker save archive's manifest.json and config; the
// config is named by its digest (<hex>.json, or blobs/sha256/<hex> in newer
// docker) and verified against it, and its diff_ids check every layer.
func (img *Image) loadDocker() error {
	var m []struct {
		Config string   `json:"Config"`
		Layers []string `json:"Layers"`
	}
	if err := img.readJSON("manifest.json", "", &m); err != nil {
		return err
	}
	if len(m) == 0 || len(m[0].Layers) == 0 {
		return errors.New("manifest.json lists no layers")
	}
	if len(m) > 1 {
		return fmt.Errorf("archive holds %d images; save exactly one", len(m))
	}
	hexpart := strings.TrimSuffix(strings.TrimPrefix(m[0].Config, "blobs/sha256/"), ".json")
	cfgDigest := "sha256:" + hexpart
	if _, err := blobName(cfgDigest); err != nil {
		return fmt.Errorf("manifest.json: config %q is not named by its digest", m[0].Config)
	}
	var cfg imageConfig
	if err := img.readJSON(m[0].Config, cfgDigest, &cfg); err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	if err := img.checkConfig(m[0].Config, &cfg, len(m[0].Layers)); err != nil {
		return err
	}
	for i, l := range m[0].Layers {
		d := ""
		// Newer docker stores layers as blobs/sha256/<hex>.
		if strings.HasPrefix(l, "blobs/sha256/") {
			d = "sha256:" + strings.TrimPrefix(l, "blobs/sha256/")
		}
		img.Layers = append(img.Layers, Layer{Name: l, Digest: d, DiffID: cfg.RootFS.DiffIDs[i]})
	}
	return nil
}

// digestReader verifies a digest when it has been read to EOF.
type digestReader struct {
	r    io.Reader
	h    hash.Hash
	want string
	what string
}

func (d *digestReader) Read(b []byte) (int, error) {
	n, err := d.r.Read(b)
	d.h.Write(b[:n])
	if err == io.EOF && d.want != "" {
		if got := "sha256:" + hex.EncodeToString(d.h.Sum(nil)); got != d.want {
			return n, fmt.Errorf("%w: %s: got %s, want %s", ErrIntegrity, d.what, got, d.want)
		}
	}
	return n, err
}

// Unpack applies all layers, in order, to dir. The limits in opts hold for
// all layers together; errors name the layer and the entry.
func (img *Image) Unpack(dir string, opts ApplyOptions, progress func(string, ...any)) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	used := &budget{}
	dirTimes := map[string]time.Time{}
	for i, l := range img.Layers {
		if progress != nil {
			progress("applying layer %d/%d %s", i+1, len(img.Layers), l.Name)
		}
		a := newApplier(root, opts, used, dirTimes)
		if err := img.applyOne(a, l); err != nil {
			return fmt.Errorf("layer %d (%s): %w", i+1, l.Name, err)
		}
	}
	img.NewestMTime = used.newest
	return restoreDirTimes(root, dirTimes)
}

func (img *Image) applyOne(a *applier, l Layer) error {
	rc, err := img.open(l.Name)
	if err != nil {
		return err
	}
	defer rc.Close()
	dr := &digestReader{r: rc, h: sha256.New(), want: l.Digest, what: "layer blob"}
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
	// The uncompressed tar must match the config's diff_id.
	ur := &digestReader{r: r, h: sha256.New(), want: l.DiffID, what: "uncompressed layer (diff_id)"}
	if err := a.applyTar(ur); err != nil {
		if wait != nil {
			io.Copy(io.Discard, r)
			wait()
		}
		return err
	}
	// Drain so the digests cover the whole blob (tar padding included).
	if _, err := io.Copy(io.Discard, ur); err != nil {
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
