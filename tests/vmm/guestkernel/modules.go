package guestkernel

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"errors"
	"fmt"
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

// Module is one loadable kernel module.
type Module struct {
	// Name is the normalised module name ("-" replaced by "_").
	Name string
	// RelPath is the path relative to ModulesDir as in modules.dep,
	// e.g. "kernel/fs/ext4/ext4.ko" (possibly with .xz/.zst/.gz).
	RelPath string
	// Path is the absolute host path of the module file.
	Path string
	// Deps are the RelPaths of every module this one needs, in modules.dep
	// order: the last one must be loaded first.
	Deps []string
}

// moduleIndex is a parsed modules.dep plus modules.builtin.
type moduleIndex struct {
	byName  map[string]*Module
	builtin map[string]bool
}

// NormalizeName maps a module or file name to the name modprobe uses:
// directory and .ko[.gz|.xz|.zst] suffix dropped, "-" replaced by "_".
func NormalizeName(s string) string {
	s = path.Base(s)
	for _, ext := range []string{".gz", ".xz", ".zst"} {
		s = strings.TrimSuffix(s, ext)
	}
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
}

func (k *Kernel) modules() (*moduleIndex, error) {
	k.indexOnce.Do(func() {
		k.index, k.indexErr = readIndex(k.ModulesDir)
	})
	return k.index, k.indexErr
}

func readIndex(dir string) (*moduleIndex, error) {
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("unable to read modules.dep: %w", err)
	}
	defer f.Close()
	idx := &moduleIndex{byName: map[string]*Module{}, builtin: map[string]bool{}}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		rel, deps, ok := strings.Cut(text, ":")
		if !ok || rel == "" {
			return nil, fmt.Errorf("modules.dep line %d: missing ':' in %q", line, text)
		}
		if err := checkRel(rel); err != nil {
			return nil, fmt.Errorf("modules.dep line %d: %w", line, err)
		}
		m := &Module{Name: NormalizeName(rel), RelPath: rel, Path: filepath.Join(dir, rel), Deps: strings.Fields(deps)}
		for _, d := range m.Deps {
			if err := checkRel(d); err != nil {
				return nil, fmt.Errorf("modules.dep line %d: %w", line, err)
			}
		}
		idx.byName[m.Name] = m
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("unable to read modules.dep: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "modules.builtin"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, l := range strings.Fields(string(b)) {
		idx.builtin[NormalizeName(l)] = true
	}
	return idx, nil
}

// checkRel refuses module paths that would escape the modules directory,
// since they are later joined onto an initramfs staging tree.
func checkRel(rel string) error {
	if path.IsAbs(rel) || rel != path.Clean(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
		return fmt.Errorf("unsafe module path %q", rel)
	}
	return nil
}

// ModulesFor resolves module names (e.g. "ext4", "virtio-pci") to the
// modules to load, dependencies included, in load order: each module comes
// after everything it depends on, and each appears once. Names built into
// the kernel are skipped. Unknown names are an error that lists them all.
func (k *Kernel) ModulesFor(names ...string) ([]Module, error) {
	idx, err := k.modules()
	if err != nil {
		return nil, err
	}
	byRel := make(map[string]*Module, len(idx.byName))
	for _, m := range idx.byName {
		byRel[m.RelPath] = m
	}
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var out []Module
	var visit func(m *Module) error
	visit = func(m *Module) error {
		switch state[m.RelPath] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("module dependency cycle through %s", m.Name)
		}
		state[m.RelPath] = visiting
		// modules.dep lists the closure with the first-to-load last.
		for i := len(m.Deps) - 1; i >= 0; i-- {
			d, ok := byRel[m.Deps[i]]
			if !ok {
				return fmt.Errorf("module %s depends on %s, which modules.dep does not list", m.Name, m.Deps[i])
			}
			if err := visit(d); err != nil {
				return err
			}
		}
		state[m.RelPath] = done
		out = append(out, *m)
		return nil
	}
	var unknown []string
	for _, n := range names {
		name := NormalizeName(n)
		if m, ok := idx.byName[name]; ok {
			if err := visit(m); err != nil {
				return nil, err
			}
		} else if !idx.builtin[name] {
			unknown = append(unknown, n)
		}
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("unknown kernel module(s) for %s: %s", k.Version, strings.Join(unknown, ", "))
	}
	return out, nil
}

// InstallModules copies mods (as returned by ModulesFor) into
// root/lib/modules/<Version>/, decompressing .gz/.xz/.zst modules so the
// guest can finit_module them without in-kernel decompression, and writes a
// modules.dep covering just those modules plus the kernel's modules.builtin.
// It returns the guest paths ("/lib/modules/...") in load order. On error,
// every file it created is removed again.
func (k *Kernel) InstallModules(ctx context.Context, root string, mods []Module) (guestPaths []string, err error) {
	base := filepath.Join("lib", "modules", k.Version)
	var created []string
	defer func() {
		if err != nil {
			for i := len(created) - 1; i >= 0; i-- {
				_ = os.Remove(created[i])
			}
		}
	}()
	mkdirs := func(dir string) error {
		// Record each directory we create so a rollback removes it too.
		var missing []string
		for d := dir; d != root && d != "." && d != "/"; d = filepath.Dir(d) {
			if _, err := os.Lstat(d); err == nil {
				break
			}
			missing = append(missing, d)
		}
		for i := len(missing) - 1; i >= 0; i-- {
			if err := os.Mkdir(missing[i], 0o755); err != nil {
				return err
			}
			created = append(created, missing[i])
		}
		return nil
	}
	if err := mkdirs(filepath.Join(root, base)); err != nil {
		return nil, fmt.Errorf("unable to create modules dir: %w", err)
	}

	var dep bytes.Buffer
	for _, m := range mods {
		if err := checkRel(m.RelPath); err != nil {
			return nil, err
		}
		rel := plainRel(m.RelPath)
		dst := filepath.Join(root, base, rel)
		if err := mkdirs(filepath.Dir(dst)); err != nil {
			return nil, fmt.Errorf("unable to create module dir: %w", err)
		}
		if err := copyModule(ctx, m.Path, dst); err != nil {
			_ = os.Remove(dst)
			return nil, err
		}
		created = append(created, dst)
		guestPaths = append(guestPaths, "/"+path.Join(base, rel))
		fmt.Fprintf(&dep, "%s:", rel)
		for _, d := range m.Deps {
			fmt.Fprintf(&dep, " %s", plainRel(d))
		}
		dep.WriteByte('\n')
	}
	files := map[string][]byte{"modules.dep": dep.Bytes()}
	if b, err := os.ReadFile(filepath.Join(k.ModulesDir, "modules.builtin")); err == nil {
		files["modules.builtin"] = b
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for name, b := range files {
		p := filepath.Join(root, base, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return nil, fmt.Errorf("unable to write %s: %w", name, err)
		}
		created = append(created, p)
	}
	return guestPaths, nil
}

// plainRel strips a compression suffix from a module path.
func plainRel(rel string) string {
	for _, ext := range []string{".gz", ".xz", ".zst"} {
		if strings.HasSuffix(rel, ".ko"+ext) {
			return strings.TrimSuffix(rel, ext)
		}
	}
	return rel
}

func copyModule(ctx context.Context, src, dst string) error {
	r, err := openModule(ctx, src)
	if err != nil {
		return err
	}
	defer r.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		return fmt.Errorf("unable to copy module %s: %w", src, err)
	}
	if err := r.Close(); err != nil {
		out.Close()
		return fmt.Errorf("unable to decompress module %s: %w", src, err)
	}
	return out.Close()
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
