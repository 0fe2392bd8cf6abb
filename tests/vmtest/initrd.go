package vmtest

import (
	"context"
	"fmt"
	"github.com/keelvm/keel/agent/container/containertest"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/keelvm/keel/rootfs-builder/cpio"
	"github.com/keelvm/keel/tests/vmm/guestkernel"
)

// ContainerRootfs is where the initramfs carries a busybox tree for test
// containers (OCI root.path inside the guest).
const ContainerRootfs = "/containers/busybox/rootfs"

// BusyboxPath is Debian's busybox-static binary.
const BusyboxPath = "/bin/busybox"

// InitrdSpec says what goes into a guest initramfs.
type InitrdSpec struct {
	Agent   string // static keel-agent binary, installed as /init
	Kernel  *guestkernel.Kernel
	Modules []string          // module names; dependencies are added
	Busybox bool              // add a busybox container rootfs at ContainerRootfs
	Files   map[string]string // guest path (relative) -> host file, copied in
}

// BuildInitrd writes a gzip'd newc initramfs to out: the agent as /init,
// /dev/console, the requested modules with a pruned modules.dep, and
// optionally a busybox rootfs for containers.
func BuildInitrd(ctx context.Context, spec InitrdSpec, out string) error {
	tree, err := os.MkdirTemp(filepath.Dir(out), ".initrd-tree-")
	if err != nil {
		return fmt.Errorf("unable to create initrd staging dir: %w", err)
	}
	defer os.RemoveAll(tree)

	if spec.Busybox {
		if err := containertest.MakeRootfs(filepath.Join(tree, ContainerRootfs)); err != nil {
			return fmt.Errorf("unable to build the container rootfs: %w", err)
		}
	}
	for guest, host := range spec.Files {
		if err := copyInto(tree, guest, host); err != nil {
			return err
		}
	}
	if spec.Kernel != nil && len(spec.Modules) > 0 {
		mods, err := spec.Kernel.ModulesFor(spec.Modules...)
		if err != nil {
			return fmt.Errorf("unable to resolve guest modules: %w", err)
		}
		if _, err := spec.Kernel.InstallModules(ctx, tree, mods); err != nil {
			return fmt.Errorf("unable to install guest modules: %w", err)
		}
	}
	entries, err := cpio.TreeEntries(tree)
	if err != nil {
		return err
	}
	entries = append(entries,
		cpio.File("init", spec.Agent, 0o755),
		cpio.Dir("sbin", 0o755),
		cpio.Symlink("sbin/init", "/init"),
		cpio.Dir("dev", 0o755),
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.CharDev("dev/null", 0o666, 1, 3),
		cpio.Dir("proc", 0o555),
		cpio.Dir("sys", 0o555),
		cpio.Dir("run", 0o755),
		cpio.Dir("tmp", fs.ModeSticky|0o777),
		cpio.Dir("etc", 0o755),
		cpio.Bytes("etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644),
		cpio.Bytes("etc/group", []byte("root:x:0:\n"), 0o644),
	)
	if spec.Busybox {
		// The guest itself gets a shell too (debug console: /bin/sh).
		entries = append(entries, cpio.Dir("bin", 0o755), cpio.File("bin/busybox", BusyboxPath, 0o755), cpio.Symlink("bin/sh", "busybox"))
	}
	return cpio.BuildInitrd(out, entries, cpio.Gzip, cpio.Options{})
}

// copyInto copies host file to tree/guest, keeping its permissions.
func copyInto(tree, guest, host string) error {
	dst := filepath.Join(tree, filepath.Clean("/"+guest))
	fi, err := os.Stat(host)
	if err != nil {
		return fmt.Errorf("initrd file %s: %w", guest, err)
	}
	b, err := os.ReadFile(host)
	if err != nil {
		return fmt.Errorf("initrd file %s: %w", guest, err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, b, fi.Mode().Perm())
}
