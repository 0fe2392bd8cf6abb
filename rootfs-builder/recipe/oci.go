package recipe

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
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
	err := CheckStaticBinary(opts.Agent)
	if err != nil {
		return nil, err
	}
	var platform oci.Platform
	if opts.Platform != "" {
		if platform, err = oci.ParsePlatform(opts.Platform); err != nil {
			return nil, err
		}
	}
	img, err := oci.Open(opts.OCI, platform)
	if err != nil {
		return nil, err
	}
	res := &Result{}
	for _, l := range img.Layers {
		res.Inputs = append(res.Inputs, Input{Role: "layer", Path: opts.OCI + ":" + l.Name, SHA256: strings.TrimPrefix(l.Digest, "sha256:"), Note: img.Format + " " + img.Platform.String()})
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := img.Unpack(dir, oci.ApplyOptions{
		AllowDevices:    os.Geteuid() == 0,
		MaxUnpackedSize: opts.MaxUnpackedSize,
		MaxFiles:        opts.MaxFiles,
		KeepSELinux:     opts.KeepSELinux,
	}, opts.Progress); err != nil {
		return nil, err
	}
	res.NewestMTime = img.NewestMTime
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

// mountPoints are the directories PID 1 mounts on.
var mountPoints = []struct {
	path string
	perm os.FileMode
}{
	{"dev", 0o755}, {"proc", 0o555}, {"sys", 0o555}, {"run", 0o755}, {"tmp", 0o1777},
}

// ensureMountPoints creates the directories PID 1 mounts on, if missing.
// The tree is an untrusted image, so this goes through an os.Root: an
// entry already there (whatever it is) is left alone, and nothing is
// created through a symlink.
func ensureMountPoints(dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, d := range mountPoints {
		if _, err := root.Lstat(d.path); err == nil {
			continue
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("mount point /%s: %w", d.path, err)
		}
		if err := root.Mkdir(d.path, 0o755); err != nil {
			return fmt.Errorf("unable to create mount point /%s: %w", d.path, err)
		}
		if err := root.Chmod(d.path, d.perm|modeBits(d.perm)); err != nil {
			return err
		}
	}
	return nil
}
