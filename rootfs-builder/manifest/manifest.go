// Package manifest records how a Keel rootfs artifact was built, as
// <artifact>.json next to it: recipe, inputs with digests, sizes, agent
// version, kernel modules and the DAX layout. The manifest holds no build
// time or host names, so reproducible builds give identical manifests.
package manifest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/keelvm/keel/rootfs-builder/internal/atomicfile"
)

// Suffix is appended to an artifact path to name its manifest.
const Suffix = ".json"

// Input is one file or source that went into a build.
type Input struct {
	Role   string `json:"role"`
	Path   string `json:"path"`
	SHA256 string `json:"sha256,omitempty"`
	Size   int64  `json:"size,omitempty"`
	Note   string `json:"note,omitempty"`
}

// FS describes the filesystem inside an image.
type FS struct {
	Type   string `json:"type"`
	UUID   string `json:"uuid"`
	Size   int64  `json:"size"`
	Offset int64  `json:"offset"`
}

// DAX describes the NVDIMM PFN info block of a --dax image.
type DAX struct {
	InfoOffset int64  `json:"info_offset"`
	DataOffset uint64 `json:"data_offset"`
	Align      uint32 `json:"align"`
	Mode       string `json:"mode"`
	NPFNs      uint64 `json:"npfns"`
	Version    string `json:"version"`
	UUID       string `json:"uuid"`
}

// Manifest is the JSON document.
type Manifest struct {
	Tool            string   `json:"tool"`
	Artifact        string   `json:"artifact"`
	Kind            string   `json:"kind"` // image, initrd or dir
	Recipe          string   `json:"recipe"`
	SHA256          string   `json:"sha256,omitempty"`
	Size            int64    `json:"size,omitempty"`
	SourceDateEpoch int64    `json:"source_date_epoch"`
	Compression     string   `json:"compression,omitempty"`
	FS              *FS      `json:"fs,omitempty"`
	DAX             *DAX     `json:"dax,omitempty"`
	AgentVersion    string   `json:"agent_version,omitempty"`
	KernelVersion   string   `json:"kernel_version,omitempty"`
	Modules         []string `json:"modules,omitempty"`
	Inputs          []Input  `json:"inputs"`
}

// Path returns the manifest path for an artifact.
func Path(artifact string) string { return artifact + Suffix }

// Write stores m next to artifact atomically.
func Write(artifact string, m *Manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(Path(artifact), append(data, '\n'), 0o644)
}

// Read loads the manifest of artifact.
func Read(artifact string) (*Manifest, error) {
	data, err := os.ReadFile(Path(artifact))
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", Path(artifact), err)
	}
	return &m, nil
}

// FileDigest returns the hex sha256 and size of a file.
func FileDigest(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
