package guestkernel

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"fmt"
	"github.com/keelvm/keel/rootfs-builder/kmod"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Named module sets a Keel guest needs on Debian's kernel, where all of
// them are modules (virtio_pci included). dax is built in and is silently
// skipped by ModulesFor. Dependencies (virtio, virtio_ring, vsock, jbd2,
// mbcache, crc16, libnvdimm, ...) are pulled in by ModulesFor.
var (
	// VirtioModules: the PCI transport and the block, net and console devices.
	VirtioModules = []string{"virtio_pci", "virtio_blk", "virtio_net", "virtio_console"}
	// VsockModules: AF_VSOCK over virtio (pulls vsock and the common transport).
	VsockModules = []string{"vmw_vsock_virtio_transport"}
	// PmemModules: -device nvdimm (ACPI NFIT, nd_pmem, BTT) and virtio-pmem-pci
	// (the latter also needs virtio_pci from VirtioModules).
	PmemModules = []string{"nfit", "nd_pmem", "nd_btt", "virtio_pmem"}
	// FSModules: rootfs and container filesystems. ext4 only soft-depends
	// on crc32c, so the generic implementation is listed explicitly.
	FSModules = []string{"ext4", "crc32c_generic", "erofs", "overlay"}
	// SharedFSModules: virtio-fs, the Kata default for shared directories.
	SharedFSModules = []string{"virtiofs"}
	// NinePModules: 9p over virtio (removed from Kata in 3.29; optional).
	NinePModules = []string{"9p", "9pnet_virtio"}
)

// GuestModules returns the names of every module a Keel guest loads at
// boot: virtio, vsock, pmem/DAX, filesystems and virtio-fs (not 9p).
func GuestModules() []string {
	var all []string
	for _, set := range [][]string{VirtioModules, VsockModules, PmemModules, FSModules, SharedFSModules} {
		all = append(all, set...)
	}
	return all
}

// Module is one module to load, as rootfs-builder/kmod resolves it: the
// guest tooling and the image builder share one implementation.
type Module = kmod.Module

// NormalizeName maps a module or file name to the name modprobe uses:
// directory and .ko[.gz|.xz|.zst] suffix dropped, "-" replaced by "_".
func NormalizeName(s string) string { return kmod.NormalizeName(s) }

// ModulesFor resolves module names (e.g. "ext4", "virtio-pci") to the
// modules to load, dependencies included, in load order: each module comes
// after everything it depends on, and each appears once. Names built into
// the kernel are skipped. Unknown names are an error that lists them all.
func (k *Kernel) ModulesFor(names ...string) ([]Module, error) {
	mods, err := kmod.Resolve(k.ModulesDir, names)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", k.Version, err)
	}
	return mods, nil
}

// InstallModules copies mods (as returned by ModulesFor) into
// root/lib/modules/<Version>/, decompressed, with a pruned modules.dep and
// the kernel's modules.builtin (see kmod.Install). It returns the guest
// paths ("/lib/modules/...") in load order. On error, every file it created
// is removed again.
func (k *Kernel) InstallModules(ctx context.Context, root string, mods []Module) ([]string, error) {
	if filepath.Base(filepath.Clean(k.ModulesDir)) != k.Version {
		return nil, fmt.Errorf("modules dir %s does not end in the kernel version %s", k.ModulesDir, k.Version)
	}
	if _, err := kmod.Install(ctx, root, k.ModulesDir, mods); err != nil {
		return nil, err
	}
	paths := make([]string, len(mods))
	for i, m := range mods {
		paths[i] = "/" + path.Join("lib/modules", k.Version, m.Dst)
	}
	return paths, nil
}

// openModule returns the uncompressed content of a module file. gzip is
// handled in-process; xz and zstd go through the xz/zstd tools so this
// package needs nothing outside the standard library.
func openModule(ctx context.Context, p string) (io.ReadCloser, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	switch {
	case strings.HasSuffix(p, ".ko"):
		return f, nil
	case strings.HasSuffix(p, ".ko.gz"):
		r, err := gzipReader(f)
		if err != nil {
			return nil, fmt.Errorf("module %s: %w", p, err)
		}
		return r, nil
	case strings.HasSuffix(p, ".ko.xz"):
		return toolReader(ctx, f, "xz", "-dc")
	case strings.HasSuffix(p, ".ko.zst"):
		return toolReader(ctx, f, "zstd", "-dcq")
	}
	f.Close()
	return nil, fmt.Errorf("module %s: not a .ko, .ko.gz, .ko.xz or .ko.zst file", p)
}

// gzipReader decompresses f; closing it closes f.
func gzipReader(f *os.File) (io.ReadCloser, error) {
	zr, err := gzip.NewReader(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &gzipModule{zr, f}, nil
}

type gzipModule struct {
	*gzip.Reader
	f *os.File
}

func (g *gzipModule) Close() error {
	err := g.Reader.Close()
	if cerr := g.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// toolModule streams a decompressor's stdout; Close reports its exit status.
type toolModule struct {
	io.ReadCloser
	cmd    *exec.Cmd
	in     *os.File
	stderr *bytes.Buffer
	closed bool
}

func toolReader(ctx context.Context, in *os.File, name string, args ...string) (io.ReadCloser, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = in
	stderr := &bytes.Buffer{}
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		in.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		in.Close()
		return nil, fmt.Errorf("unable to decompress %s: %w", in.Name(), err)
	}
	return &toolModule{ReadCloser: out, cmd: cmd, in: in, stderr: stderr}, nil
}

func (t *toolModule) Close() error {
	if t.closed {
		return nil
	}
	t.closed = true
	// Drain so the tool is not killed by SIGPIPE before reporting errors.
	_, _ = io.Copy(io.Discard, t.ReadCloser)
	err := t.cmd.Wait()
	t.in.Close()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", t.cmd.Path, err, strings.TrimSpace(t.stderr.String()))
	}
	return nil
}

// modinfo returns the name and direct dependencies recorded in a module's
// .modinfo ELF section (NUL-separated key=value strings).
func modinfo(ctx context.Context, p string) (name string, depends []string, err error) {
	r, err := openModule(ctx, p)
	if err != nil {
		return "", nil, err
	}
	defer r.Close()
	var ra io.ReaderAt
	if f, ok := r.(*os.File); ok {
		ra = f
	} else {
		b, err := io.ReadAll(r)
		if err != nil {
			return "", nil, fmt.Errorf("module %s: %w", p, err)
		}
		ra = bytes.NewReader(b)
	}
	ef, err := elf.NewFile(ra)
	if err != nil {
		return "", nil, fmt.Errorf("module %s: %w", p, err)
	}
	sec := ef.Section(".modinfo")
	if sec == nil {
		return "", nil, fmt.Errorf("module %s has no .modinfo section", p)
	}
	data, err := sec.Data()
	if err != nil {
		return "", nil, fmt.Errorf("module %s: %w", p, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := bytes.Cut(kv, []byte("="))
		if !ok {
			continue
		}
		switch string(k) {
		case "name":
			name = NormalizeName(string(v))
		case "depends":
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					depends = append(depends, NormalizeName(d))
				}
			}
		}
	}
	if name == "" {
		name = NormalizeName(p)
	}
	return name, depends, nil
}

// GenerateModulesDep writes dir/modules.dep (depmod's format) from the
// .modinfo "depends" of every module under dir. It does what the package's
// postinst would do with depmod, without needing kmod on the host.
func GenerateModulesDep(dir string) error {
	ctx := context.Background()
	relOf := map[string]string{}
	direct := map[string][]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !isModuleFile(d.Name()) {
			return nil
		}
		name, deps, err := modinfo(ctx, p)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if prev, dup := relOf[name]; dup {
			return fmt.Errorf("module %s provided twice: %s and %s", name, prev, rel)
		}
		relOf[name] = filepath.ToSlash(rel)
		direct[name] = deps
		return nil
	})
	if err != nil {
		return fmt.Errorf("unable to index modules in %s: %w", dir, err)
	}

	names := make([]string, 0, len(relOf))
	for n := range relOf {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return relOf[names[i]] < relOf[names[j]] })

	var buf bytes.Buffer
	for _, n := range names {
		order, err := loadOrder(n, direct, relOf)
		if err != nil {
			return err
		}
		fmt.Fprintf(&buf, "%s:", relOf[n])
		// depmod convention: the closure listed so the last loads first.
		for i := len(order) - 2; i >= 0; i-- {
			fmt.Fprintf(&buf, " %s", relOf[order[i]])
		}
		buf.WriteByte('\n')
	}
	tmp := filepath.Join(dir, ".modules.dep.tmp")
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, "modules.dep")); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

// loadOrder returns name's dependency closure in load order, ending with
// name itself.
func loadOrder(name string, direct map[string][]string, relOf map[string]string) ([]string, error) {
	var order []string
	state := map[string]int{}
	var visit func(n string) error
	visit = func(n string) error {
		switch state[n] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle through %s", n)
		}
		if _, ok := relOf[n]; !ok {
			return fmt.Errorf("module %s needed by %s is missing", n, name)
		}
		state[n] = 1
		for _, d := range direct[n] {
			if err := visit(d); err != nil {
				return err
			}
		}
		state[n] = 2
		order = append(order, n)
		return nil
	}
	return order, visit(name)
}

func isModuleFile(name string) bool {
	for _, ext := range []string{".ko", ".ko.gz", ".ko.xz", ".ko.zst"} {
		if strings.HasSuffix(name, ext) {
			return true
		}
	}
	return false
}
