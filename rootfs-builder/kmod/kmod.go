// Package kmod copies selected kernel modules and their dependencies (from
// modules.dep) into a root filesystem tree, decompressing .xz/.zst/.gz
// modules so a minimal init can load them with finit_module without
// in-kernel decompression support.
//
// Besides the modules it writes a pruned modules.dep (so modprobe works if
// present) and modules.load: one module path per line in dependency order
// (dependencies first), which is what a Go /init needs to load them.
package kmod

import (
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/keelvm/keel/rootfs-builder/internal/confine"
)

// Module is one resolved module.
type Module struct {
	Name string // normalised name, e.g. "nd_pmem"
	Src  string // path relative to the modules dir, as in modules.dep
	Dst  string // path relative to the modules dir after decompression
}

var compressedExt = []string{".xz", ".zst", ".gz"}

// NormalizeName maps a module file or name to its canonical name: base
// name without .ko[.xz|.zst|.gz], "-" replaced by "_".
func NormalizeName(s string) string {
	s = path.Base(s)
	for _, e := range compressedExt {
		s = strings.TrimSuffix(s, e)
	}
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
}

func plain(rel string) string {
	for _, e := range compressedExt {
		rel = strings.TrimSuffix(rel, e)
	}
	return rel
}

// ParseDep parses modules.dep content into module path -> dependency paths.
func ParseDep(r io.Reader) (map[string][]string, error) {
	deps := map[string][]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		mod, rest, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("modules.dep line %d: missing ':'", n)
		}
		for _, p := range append([]string{mod}, strings.Fields(rest)...) {
			if path.IsAbs(p) || strings.Contains("/"+p+"/", "/../") {
				return nil, fmt.Errorf("modules.dep line %d: unsafe path %q", n, p)
			}
		}
		deps[strings.TrimSpace(mod)] = strings.Fields(rest)
	}
	return deps, sc.Err()
}

// Resolve returns the named modules plus all their dependencies, ordered so
// that every module comes after the modules it depends on. Names the kernel
// has built in (modules.builtin) need no file and are skipped; names found
// nowhere are one error listing them all.
func Resolve(modulesDir string, names []string) ([]Module, error) {
	f, err := os.Open(filepath.Join(modulesDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w (run depmod -b for this tree)", err)
	}
	defer f.Close()
	deps, err := ParseDep(f)
	if err != nil {
		return nil, err
	}
	builtin, err := readBuiltin(modulesDir)
	if err != nil {
		return nil, err
	}
	byName := map[string]string{}
	for p := range deps {
		byName[NormalizeName(p)] = p
	}
	var order []Module
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(p string, chain []string) error
	visit = func(p string, chain []string) error {
		switch state[p] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, NormalizeName(p)), " -> "))
		}
		if _, ok := deps[p]; !ok {
			return fmt.Errorf("module %s listed as a dependency but missing from modules.dep", p)
		}
		state[p] = 1
		for _, d := range deps[p] {
			if err := visit(d, append(chain, NormalizeName(p))); err != nil {
				return err
			}
		}
		state[p] = 2
		order = append(order, Module{Name: NormalizeName(p), Src: p, Dst: plain(p)})
		return nil
	}
	sorted := append([]string(nil), names...)
	sort.Strings(sorted)
	var unknown []string
	for _, n := range sorted {
		p, ok := byName[NormalizeName(n)]
		if !ok {
			if !builtin[NormalizeName(n)] {
				unknown = append(unknown, strconv.Quote(n))
			}
			continue
		}
		if err := visit(p, nil); err != nil {
			return nil, err
		}
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("kernel module(s) %s not found in %s/modules.dep (misspelt?)", strings.Join(unknown, ", "), modulesDir)
	}
	return order, nil
}

// readBuiltin reads modules.builtin (absent is fine) as a set of names.
func readBuiltin(modulesDir string) (map[string]bool, error) {
	b, err := os.ReadFile(filepath.Join(modulesDir, "modules.builtin"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	set := map[string]bool{}
	for _, l := range strings.Fields(string(b)) {
		set[NormalizeName(l)] = true
	}
	return set, nil
}

// Install copies mods (from Resolve) into root/lib/modules/<kver>/ where
// kver is the base name of modulesDir, decompressing them so the guest can
// finit_module them without in-kernel decompression, and writes the pruned
// modules.dep, modules.load and the kernel's modules.builtin. It returns the
// kernel version. On error every file and directory it created is removed.
//
// root may hold an untrusted image: every write goes through an os.Root on
// it, so a planted lib/modules symlink (to the host's / or anywhere outside
// root) makes Install fail instead of writing through it, and an entry the
// image put where a module goes is replaced, never written through.
func Install(ctx context.Context, root, modulesDir string, mods []Module) (_ string, err error) {
	kver := filepath.Base(filepath.Clean(modulesDir))
	if kver == "." || kver == ".." || kver == "/" {
		return "", fmt.Errorf("modules dir %s does not name a kernel version", modulesDir)
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return "", err
	}
	defer r.Close()
	dst := path.Join("lib/modules", kver)
	var created []string // root-relative, in creation order; removed in reverse on error
	defer func() {
		if err != nil {
			for i := len(created) - 1; i >= 0; i-- {
				_ = r.Remove(created[i])
			}
		}
	}()
	mkdirs := func(dir string) error {
		var missing []string
		for d := dir; d != "." && d != "/"; d = path.Dir(d) {
			if _, err := r.Lstat(d); err == nil {
				break
			} else if !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("unable to create /%s in the image: %w", dir, err)
			}
			missing = append(missing, d)
		}
		for i := len(missing) - 1; i >= 0; i-- {
			if err := r.Mkdir(missing[i], 0o755); err != nil {
				return fmt.Errorf("unable to create /%s in the image: %w", missing[i], err)
			}
			created = append(created, missing[i])
		}
		return nil
	}
	write := func(name string, data []byte) error {
		p := path.Join(dst, name)
		if err := checkReplaceable(r, p); err != nil {
			return err
		}
		if err := confine.WriteFile(r, p, data, 0o644); err != nil {
			return fmt.Errorf("unable to write /%s in the image: %w", p, err)
		}
		created = append(created, p)
		return nil
	}
	if err := mkdirs(dst); err != nil {
		return "", err
	}
	var dep, load strings.Builder
	inSet := map[string]bool{}
	for _, m := range mods {
		inSet[m.Src] = true
	}
	deps := map[string][]string{}
	if f, err := os.Open(filepath.Join(modulesDir, "modules.dep")); err == nil {
		deps, _ = ParseDep(f)
		f.Close()
	}
	for _, m := range mods {
		if path.IsAbs(m.Src) || strings.Contains("/"+m.Src+"/", "/../") || m.Dst != plain(m.Src) {
			return "", fmt.Errorf("module %s: unsafe path %q", m.Name, m.Src)
		}
		out := path.Join(dst, path.Clean(m.Dst))
		if err := mkdirs(path.Dir(out)); err != nil {
			return "", err
		}
		err := decompress(ctx, filepath.Join(modulesDir, filepath.FromSlash(m.Src)), r, out, func() { created = append(created, out) })
		if err != nil {
			return "", fmt.Errorf("module %s: %w", m.Name, err)
		}
		fmt.Fprintf(&dep, "%s:", m.Dst)
		for _, d := range deps[m.Src] {
			if inSet[d] {
				fmt.Fprintf(&dep, " %s", plain(d))
			}
		}
		dep.WriteString("\n")
		fmt.Fprintf(&load, "%s\n", m.Dst)
	}
	if err := write("modules.dep", []byte(dep.String())); err != nil {
		return "", err
	}
	if err := write("modules.load", []byte(load.String())); err != nil {
		return "", err
	}
	if b, err := os.ReadFile(filepath.Join(modulesDir, "modules.builtin")); err == nil {
		if err := write("modules.builtin", b); err != nil {
			return "", err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	return kver, nil
}

// checkReplaceable refuses to replace anything but a regular file (or
// nothing) at name: the image planted it, and a symlink or device where a
// module or modules.dep goes is an escape attempt.
func checkReplaceable(r *os.Root, name string) error {
	st, err := r.Lstat(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("unable to write /%s in the image: %w", name, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("refusing to replace /%s in the image: it is a %s, not a regular file", name, typeName(st.Mode()))
	}
	return r.Remove(name)
}

func typeName(m os.FileMode) string {
	switch {
	case m&os.ModeSymlink != 0:
		return "symlink"
	case m.IsDir():
		return "directory"
	case m&os.ModeDevice != 0:
		return "device"
	}
	return "special file"
}

// decompress writes the (possibly compressed) host module src to dst inside
// r, calling created once dst exists.
func decompress(ctx context.Context, src string, r *os.Root, dst string, created func()) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	// Replace a file the image had at dst; never write through it, and
	// refuse anything but a regular file there (a planted symlink is an
	// attack, not content).
	if err := checkReplaceable(r, dst); err != nil {
		return err
	}
	out, err := r.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o644)
	if err != nil {
		return err
	}
	created()
	defer out.Close()
	var tool string
	switch {
	case strings.HasSuffix(src, ".xz"):
		tool = "xz"
	case strings.HasSuffix(src, ".zst"):
		tool = "zstd"
	case strings.HasSuffix(src, ".gz"):
		zr, err := gzip.NewReader(in)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, zr); err != nil {
			return err
		}
		return out.Close()
	default:
		if _, err := io.Copy(out, in); err != nil {
			return err
		}
		return out.Close()
	}
	cmd := exec.CommandContext(ctx, tool, "-dc")
	var stderr strings.Builder
	cmd.Stdin, cmd.Stdout, cmd.Stderr = in, out, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s -dc: %v: %s", tool, err, strings.TrimSpace(stderr.String()))
	}
	return out.Close()
}
