package vmtest

import (
	"archive/tar"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/container/containertest"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/rootfs-builder/build"
	"github.com/keelvm/keel/rootfs-builder/image"
	"github.com/keelvm/keel/rootfs-builder/internal/ocitest"
	"github.com/keelvm/keel/tests/vmm/qemu"
	"github.com/keelvm/keel/tests/vmtest"
)

// capDacReadSearch is a VFS v2 security.capability value granting
// cap_dac_read_search (bit 2) permitted and effective: `setcap
// cap_dac_read_search+ep`.
const capDacReadSearch = "\x01\x00\x00\x02\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

const privRootfs = "/containers/priv/rootfs"

// treeEntries turns a host tree into layer entries under prefix.
func treeEntries(t *testing.T, dir, prefix string) []ocitest.Entry {
	t.Helper()
	var ents []ocitest.Entry
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			link, _ = os.Readlink(p)
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		h.Name = prefix + filepath.ToSlash(rel)
		e := ocitest.Entry{Hdr: *h}
		if info.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.Body = string(b)
		}
		ents = append(ents, e)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ents
}

// ociArchive tars an OCI layout directory (an "oci-archive", as
// `skopeo copy ... oci-archive:` writes).
func ociArchive(t *testing.T, layout string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "image.oci.tar")
	if err := os.WriteFile(out, ocitest.Tar(treeEntries(t, layout, "")...), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// TestOCIArchiveKeepsSetuidAndCapsInVM builds a DAX ext4 image with the
// oci recipe from an OCI archive whose layer carries a container rootfs
// with three copies of a probe binary: setuid root, with the file
// capability cap_dac_read_search+ep (a PAX SCHILY.xattr record), and
// plain. It boots the agent from that image and runs each probe as uid
// 1000 in a container, reading a root-only (0400) file: the setuid copy
// runs with euid 0, the capability copy with cap_dac_read_search, and both
// read it; the plain copy is refused, so the test can fail.
func TestOCIArchiveKeepsSetuidAndCapsInVM(t *testing.T) {
	if testing.Short() {
		t.Skip("VM test skipped in -short mode")
	}
	if why := vmtest.Available(); why != "" {
		t.Skip(why)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: the image carries root-owned setuid files and security.capability")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	agent, err := vmtest.AgentBinary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	probe, err := os.ReadFile(buildGo(ctx, t, "./testdata/probe"))
	if err != nil {
		t.Fatal(err)
	}
	tree := t.TempDir()
	if err := containertest.MakeRootfs(tree); err != nil {
		t.Fatal(err)
	}
	prefix := strings.TrimPrefix(privRootfs, "/") + "/"
	ents := []ocitest.Entry{ocitest.Dir("containers/", 0o755), ocitest.Dir("containers/priv/", 0o755), ocitest.Dir(prefix, 0o755)}
	ents = append(ents, treeEntries(t, tree, prefix)...)
	ents = append(ents,
		ocitest.Entry{Hdr: tar.Header{Name: prefix + "probe-suid", Typeflag: tar.TypeReg, Mode: 0o4755}, Body: string(probe)},
		ocitest.Entry{Hdr: tar.Header{Name: prefix + "probe-cap", Typeflag: tar.TypeReg, Mode: 0o755,
			PAXRecords: map[string]string{"SCHILY.xattr.security.capability": capDacReadSearch}}, Body: string(probe)},
		ocitest.Entry{Hdr: tar.Header{Name: prefix + "probe-plain", Typeflag: tar.TypeReg, Mode: 0o755}, Body: string(probe)},
		ocitest.Entry{Hdr: tar.Header{Name: prefix + "secret", Typeflag: tar.TypeReg, Mode: 0o400}, Body: "s3cret\n"},
	)
	layout := t.TempDir()
	if _, err := ocitest.WriteLayout(layout, ocitest.Image{Layers: [][]byte{ocitest.Tar(ents...)}, Gzip: true}); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "rootfs.img")
	m, err := build.Run(ctx, build.Config{Recipe: "oci", Output: build.OutputImage, FS: image.Ext4, DAX: true, Out: img, Epoch: 1700000000,
		Options: build.RecipeOptions{Agent: agent, OCI: ociArchive(t, layout)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Inputs) == 0 || !strings.HasPrefix(m.Inputs[0].Note, "oci-archive") {
		t.Fatalf("image not read as an OCI archive: %+v", m.Inputs)
	}

	g, err := vmtest.Boot(ctx, vmtest.Config{
		ExtraModules: []string{"nfit", "nd_pmem", "ext4", "crc32c_generic"},
		Append:       []string{"agent.rootfs=/dev/pmem0", "rootfstype=ext4"},
		Pmem:         []qemu.PmemDevice{{Path: img, Kind: qemu.NVDIMM, ReadOnly: true}},
		Log:          logWriter{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("serial console:\n%s", g.VM.SerialLog())
		}
		g.Close()
	}()
	c, err := g.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Agent.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: "priv", Hostname: "priv"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	for _, tc := range []struct{ probe, want string }{
		{"probe-suid", "euid=0 "},
		{"probe-cap", "euid=1000 capeff=0000000000000004 read=OK:s3cret"},
		{"probe-plain", "euid=1000 capeff=0000000000000000 read=ERR:"},
	} {
		spec := vmtest.BusyboxSpec(privRootfs, "/"+tc.probe, "/secret")
		spec.Process.User = &pb.User{UID: 1000, GID: 1000}
		// Setuid and file capabilities only apply without no_new_privs
		// and within the bounding set.
		spec.Process.NoNewPrivileges = false
		spec.Process.Capabilities.Bounding = append(spec.Process.Capabilities.Bounding, "CAP_DAC_READ_SEARCH")
		out, stderr, status, err := vmtest.RunContainer(ctx, c.Agent, tc.probe, spec)
		if err != nil {
			t.Fatalf("%s: %v", tc.probe, err)
		}
		t.Logf("%s: %s", tc.probe, strings.TrimSpace(out))
		if status != 0 || !strings.Contains(out, tc.want) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want %q", tc.probe, status, out, stderr, tc.want)
		}
		if tc.probe == "probe-suid" && !strings.Contains(out, "read=OK:s3cret") {
			t.Errorf("setuid probe could not read the root-only file: %q", out)
		}
	}
	if _, err := c.Agent.DestroySandbox(ctx, &pb.DestroySandboxRequest{}); err != nil {
		t.Errorf("DestroySandbox: %v", err)
	}
	select {
	case <-g.VM.Done():
	case <-ctx.Done():
		t.Errorf("guest did not power off: %v", ctx.Err())
	}
}
