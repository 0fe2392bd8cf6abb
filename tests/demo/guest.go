package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/keelvm/keel/agent/container/containertest"
	"github.com/keelvm/keel/kernel-config/kbuild"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/rootfs-builder/build"
	"github.com/keelvm/keel/rootfs-builder/image"
	"github.com/keelvm/keel/tests/daxtest"
	"github.com/keelvm/keel/tests/vmm/qemu"
	"github.com/keelvm/keel/tests/vmtest"
)

// Inside the DAX image: the busybox container's rootfs and the file the
// demo's container reads to show that DAX reads skip the page cache.
const (
	ContainerRootfs = "/containers/busybox/rootfs"
	BigFile         = "/data/big"
	BigFileSize     = 16 << 20
	// Hostname is the sandbox's (CreateSandbox), which containers share.
	Hostname = "keel-demo"
	// LogPort is the agent's log stream (agent.log_vport), for keelctl logs.
	LogPort = 1025
)

// imageEpoch makes the image reproducible (SOURCE_DATE_EPOCH).
const imageEpoch = 1700000000

// DAXGuest is a guest booted from a DAX root image.
type DAXGuest struct {
	*vmtest.Guest
	Image string
	// OwnKernel: Keel's kernel (kernel-config, cached by `make kernel`)
	// booted with no initramfs; otherwise Debian's kernel with an
	// initramfs that loads the pmem modules and switches root.
	OwnKernel  bool
	KernelDesc string
}

// BuildImage builds what `keel-rootfs build --recipe minimal --busybox
// --dax` builds (the agent as /sbin/init, busybox), plus a busybox container
// rootfs and a 16 MiB random file inside it, as a DAX-capable ext4 image
// (NVDIMM PFN info block, filesystem at 2 MiB) in dir.
func BuildImage(ctx context.Context, dir, agent string) (string, error) {
	tree := filepath.Join(dir, "tree")
	if _, err := build.Run(ctx, build.Config{
		Recipe: "minimal", Output: build.OutputDir, Out: tree, Epoch: imageEpoch,
		Options: build.RecipeOptions{Agent: agent, Busybox: vmtest.BusyboxPath},
	}); err != nil {
		return "", fmt.Errorf("unable to build the minimal recipe: %w", err)
	}
	defer os.RemoveAll(tree)
	cr := filepath.Join(tree, ContainerRootfs)
	if err := containertest.MakeRootfs(cr); err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Join(cr, filepath.Dir(BigFile)), 0o755); err != nil {
		return "", err
	}
	if err := daxtest.WriteRandomFile(filepath.Join(cr, BigFile), BigFileSize); err != nil {
		return "", err
	}
	img := filepath.Join(dir, "rootfs-dax.ext4")
	if _, err := image.Build(ctx, tree, img, image.Spec{FS: image.Ext4, DAX: true, Epoch: imageEpoch}); err != nil {
		return "", fmt.Errorf("unable to build the DAX image: %w", err)
	}
	return img, nil
}

// BootDAX builds the image and boots it read-only: with Keel's kernel
// (when `make kernel` cached it) on virtio-pmem, else with Debian's on an
// NVDIMM. The image (PFN info block, filesystem at 2 MiB) suits both
// devices; virtio-pmem spares the boot ACPI NFIT parsing and its _DSM calls
// into QEMU (under -icount a trivial init is ready 23 ms of guest work
// sooner, 0.380 vs 0.403 s, and nfit/nd_pmem lead the nvdimm boot's
// initcall_debug list). Debian's kernel has virtio_pmem as a module too,
// but its initramfs path keeps the NVDIMM modules it was built around.
func BootDAX(ctx context.Context, dir string, log io.Writer) (*DAXGuest, error) {
	agent, err := vmtest.AgentBinary(ctx)
	if err != nil {
		return nil, err
	}
	img, err := BuildImage(ctx, dir, agent)
	if err != nil {
		return nil, err
	}
	cfg := vmtest.Config{
		Pmem: []qemu.PmemDevice{{Path: img, Kind: qemu.NVDIMM, ReadOnly: true}},
		Log:  log,
	}
	g := &DAXGuest{Image: img}
	k, err := kbuild.DefaultBuilt(ctx, "x86_64")
	switch {
	case err == nil:
		g.OwnKernel = true
		cfg.Kernel = k.BzImage
		if k.Vmlinux != "" {
			cfg.Kernel = k.Vmlinux
		}
		cfg.NoInitrd = true
		cfg.Pmem[0].Kind = qemu.VirtioPmem
		// Every driver is built in: the kernel mounts the DAX root itself
		// and runs the agent from it; vmtest.DAXRootArgs says why each
		// TCG option is there.
		cfg.QEMU = vmtest.FastQEMU
		cfg.Append = append([]string(nil), vmtest.DAXRootArgs...)
		g.KernelDesc = "Keel's own kernel " + cfg.Kernel + " (no initramfs; the kernel mounts /dev/pmem0, a virtio-pmem device, with dax=always)"
	case errors.Is(err, kbuild.ErrNotBuilt):
		// The initramfs holds the agent and the NVDIMM modules; the agent
		// loads them and switches root onto the image (dax=always is its
		// default when the device supports DAX).
		cfg.ExtraModules = daxtest.NVDIMMModules
		cfg.Append = []string{"agent.rootfs=/dev/pmem0", "rootfstype=ext4"}
		g.KernelDesc = "Debian's kernel + a small initramfs (keel-agent loads nfit, nd_pmem, ext4 and switches root to /dev/pmem0); " +
			"for the faster boot straight from the DAX image build Keel's kernel once: `make kernel` (6-10 min, cached in /var/cache/keel/kernel)"
	default:
		return nil, err
	}
	cfg.Append = append(cfg.Append, fmt.Sprintf("agent.log_vport=%d", LogPort))
	if g.Guest, err = vmtest.Boot(ctx, cfg); err != nil {
		return nil, err
	}
	// The sandbox a runtime would create; keelctl run uses it.
	c, err := g.Dial(ctx)
	if err != nil {
		g.Close()
		return nil, err
	}
	defer c.Close()
	if _, err := c.Agent.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: "demo", Hostname: Hostname}); err != nil {
		g.Close()
		return nil, fmt.Errorf("CreateSandbox: %w", err)
	}
	return g, nil
}
