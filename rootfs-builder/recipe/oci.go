package recipe

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/keelvm/keel/rootfs-builder/oci"
)

// OCI builds the rootfs from a container image (OCI layout directory or
// `docker save` tarball) and installs the agent as its init.
type OCI struct{}

// Name implements Recipe.
func (OCI) Name() string { return "oci" }

// Build implements Recipe.
func (OCI) Build(ctx context.Context, dir string, opts Options) (*Result, error) {
	if opts.OCI == "" {
		return nil, fmt.Errorf("oci recipe needs --oci PATH (OCI layout dir or docker save tarball)")
	}
	if opts.Agent == "" {
		return nil, fmt.Errorf("oci recipe needs --agent")
	}
	if err := CheckStaticBinary(opts.Agent); err != nil {
		return nil, err
	}
	img, err := oci.Open(opts.OCI)
	if err != nil {
		return nil, err
	}
	res := &Result{}
	for _, l := range img.Layers {
		res.Inputs = append(res.Inputs, Input{Role: "layer", Path: opts.OCI + ":" + l.Name, SHA256: strings.TrimPrefix(l.Digest, "sha256:"), Note: img.Format})
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := img.Unpack(dir, oci.ApplyOptions{AllowDevices: os.Geteuid() == 0}, opts.Progress); err != nil {
		return nil, err
	}
	if err := ensureMountPoints(dir); err != nil {
		return nil, err
	}
	in, err := InstallAgent(dir, opts.Agent)
	if err != nil {
		return nil, err
	}
	res.Inputs = append(res.Inputs, in)
	return res, nil
}

// ensureMountPoints creates the directories PID 1 mounts on, if missing.
func ensureMountPoints(dir string) error {
	for _, d := range skeletonDirs {
		p := filepath.Join(dir, d.path)
		if _, err := os.Lstat(p); err == nil {
			continue
		}
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
		if err := os.Chmod(p, d.perm|modeBits(d.perm)); err != nil {
			return err
		}
	}
	return nil
}
