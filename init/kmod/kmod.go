// Package kmod loads kernel modules with finit_module(2), resolving their
// dependencies from the depmod index (/lib/modules/$(uname -r)/modules.dep,
// modules.alias, modules.builtin) without modprobe.
//
// Names are normalised like the kernel does ('-' and '_' are the same).
// A module that is built in, already loaded (/sys/module/NAME) or reported
// as EEXIST counts as loaded. Compressed modules (.ko.xz, .ko.zst, .ko.gz)
// are handed to the kernel with MODULE_INIT_COMPRESSED_FILE, which needs
// Linux >= 6.4 with CONFIG_MODULE_DECOMPRESS; otherwise Load returns an
// error saying so.
//
// The parsers are pure functions; Loader takes its syscall and its
// "already loaded" probe as fields so tests run without a kernel.
package kmod

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ModuleSpec names a module and the parameter string for finit_module
// ("p1=a p2=b"), as in Kata's CreateSandbox.kernel_modules.
type ModuleSpec struct {
	Name   string
	Params string
}

// Errors returned by Resolve and Load.
var (
	ErrNotFound     = errors.New("module not found in modules.dep")
	ErrDepCycle     = errors.New("dependency cycle in modules.dep")
	ErrCompression  = errors.New("kernel cannot load compressed modules (needs Linux >= 6.4 with CONFIG_MODULE_DECOMPRESS)")
	maxDepthOrNodes = 4096 // bound on resolution work for hostile indexes
)

// Normalize returns the kernel's canonical module name: '-' becomes '_'.
func Normalize(name string) string { return strings.ReplaceAll(name, "-", "_") }

// NameFromPath returns the module name of a modules.dep path
// ("kernel/fs/erofs/erofs.ko.xz" → "erofs").
func NameFromPath(p string) string {
	b := path.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return Normalize(b)
}

// Dep is one modules.dep entry.
type Dep struct {
	Path string   // relative to the modules directory (or absolute)
	Deps []string // module names this one needs
}

// ParseDep parses modules.dep ("path: dep-path dep-path ...") into a map
// from module name to entry. Malformed lines are reported together in the
// error; the well-formed entries are still returned.
func ParseDep(data string) (map[string]Dep, error) {
	out := make(map[string]Dep)
	var bad []string
	for i, line := range strings.Split(data, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p, rest, ok := strings.Cut(line, ":")
		p = strings.TrimSpace(p)
		if !ok || !strings.Contains(p, ".ko") {
			bad = append(bad, fmt.Sprintf("line %d", i+1))
			continue
		}
		d := Dep{Path: p}
		for _, dp := range strings.Fields(rest) {
			d.Deps = append(d.Deps, NameFromPath(dp))
		}
		out[NameFromPath(p)] = d
	}
	if len(bad) > 0 {
		return out, fmt.Errorf("malformed modules.dep: %s", strings.Join(bad, ", "))
	}
	return out, nil
}

// Alias is one modules.alias entry: a glob pattern and the module it names.
type Alias struct {
	Pattern string
	Module  string
}

// ParseAlias parses modules.alias ("alias PATTERN MODULE"); other lines
// are ignored.
func ParseAlias(data string) []Alias {
	var out []Alias
	for _, line := range strings.Split(data, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "alias" {
			out = append(out, Alias{Pattern: f[1], Module: Normalize(f[2])})
		}
	}
	return out
}

// ParseBuiltin parses modules.builtin (one path per line) into a set of names.
func ParseBuiltin(data string) map[string]bool {
	out := make(map[string]bool)
	for _, line := range strings.Split(data, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			out[NameFromPath(line)] = true
		}
	}
	return out
}

// Index is a parsed depmod index.
type Index struct {
	Dir     string
	Deps    map[string]Dep
	Aliases []Alias
	Builtin map[string]bool
}

// ModulesDir returns /lib/modules/$(uname -r).
func ModulesDir() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("unable to uname: %w", err)
	}
	return filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:])), nil
}

// OpenIndex reads modules.dep (required), modules.alias and
// modules.builtin (optional) from dir.
func OpenIndex(dir string) (*Index, error) {
	dep, err := os.ReadFile(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("unable to read module index: %w", err)
	}
	ix := &Index{Dir: dir}
	if ix.Deps, err = ParseDep(string(dep)); err != nil {
		return nil, err
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.alias")); err == nil {
		ix.Aliases = ParseAlias(string(b))
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		ix.Builtin = ParseBuiltin(string(b))
	}
	return ix, nil
}

// Lookup maps a name or alias to a module name known to the index.
func (ix *Index) Lookup(name string) (string, bool) {
	n := Normalize(name)
	if _, ok := ix.Deps[n]; ok || ix.Builtin[n] {
		return n, true
	}
	for _, a := range ix.Aliases {
		if ok, _ := path.Match(a.Pattern, name); ok || a.Pattern == name {
			return a.Module, true
		}
	}
	return n, false
}

// Resolve returns the modules to load for name, dependencies first, the
// module itself last. Built-in modules are left out (nothing to load).
func (ix *Index) Resolve(name string) ([]string, error) {
	n, ok := ix.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("%s: %w", name, ErrNotFound)
	}
	var order []string
	state := map[string]int{} // 1 = visiting, 2 = done
	var visit func(m string, depth int) error
	visit = func(m string, depth int) error {
		switch state[m] {
		case 1:
			return fmt.Errorf("%s: %w", m, ErrDepCycle)
		case 2:
			return nil
		}
		if depth > maxDepthOrNodes || len(state) > maxDepthOrNodes {
			return fmt.Errorf("%s: %w", m, ErrDepCycle)
		}
		if ix.Builtin[m] {
			state[m] = 2
			return nil
		}
		d, ok := ix.Deps[m]
		if !ok {
			return fmt.Errorf("%s (needed by %s): %w", m, n, ErrNotFound)
		}
		state[m] = 1
		for _, dep := range d.Deps {
			if err := visit(dep, depth+1); err != nil {
				return err
			}
		}
		state[m] = 2
		order = append(order, m)
		return nil
	}
	if err := visit(n, 0); err != nil {
		return nil, err
	}
	return order, nil
}

// Loader loads modules. The zero value is not usable; see NewLoader.
type Loader struct {
	Index *Index
	// Finit is finit_module(2); tests replace it.
	Finit func(fd int, params string, flags int) error
	// Loaded reports whether a module is already present; tests replace it.
	Loaded func(name string) bool
	Log    *slog.Logger
}

// NewLoader returns a Loader for the running kernel's module directory.
func NewLoader(log *slog.Logger) (*Loader, error) {
	dir, err := ModulesDir()
	if err != nil {
		return nil, err
	}
	ix, err := OpenIndex(dir)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Loader{Index: ix, Finit: unix.FinitModule, Loaded: sysModuleExists, Log: log}, nil
}

func sysModuleExists(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/module", name))
	return err == nil
}

// Load loads each spec and its dependencies, in order. Parameters apply to
// the named module only. It stops at the first failure.
func (l *Loader) Load(specs []ModuleSpec) error {
	for _, s := range specs {
		order, err := l.Index.Resolve(s.Name)
		if err != nil {
			return fmt.Errorf("unable to load module: %w", err)
		}
		for i, m := range order {
			params := ""
			if i == len(order)-1 {
				params = s.Params
			}
			if err := l.loadOne(m, params); err != nil {
				return err
			}
		}
	}
	return nil
}

func (l *Loader) loadOne(name, params string) error {
	if l.Loaded != nil && l.Loaded(name) {
		return nil
	}
	p := l.Index.Deps[name].Path
	if !filepath.IsAbs(p) {
		p = filepath.Join(l.Index.Dir, p)
	}
	flags := 0
	if isCompressed(p) {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("unable to load module %s: %w", name, err)
	}
	defer f.Close()
	start := time.Now()
	err = l.Finit(int(f.Fd()), params, flags)
	switch {
	case err == nil:
		l.Log.Debug("insmod", "module", name, "path", p, "params", params, "took", time.Since(start))
		return nil
	case errors.Is(err, unix.EEXIST):
		return nil
	case flags != 0 && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL)):
		return fmt.Errorf("unable to load module %s from %s: %w (%v)", name, p, ErrCompression, err)
	}
	return fmt.Errorf("unable to load module %s from %s: %w", name, p, err)
}

func isCompressed(p string) bool {
	for _, ext := range []string{".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(p, ext) {
			return true
		}
	}
	return false
}

// Load loads modules (and their dependencies) for the running kernel. It
// is what CreateSandbox's kernel_modules handler and boot call.
func Load(specs []ModuleSpec, log *slog.Logger) error {
	if len(specs) == 0 {
		return nil
	}
	l, err := NewLoader(log)
	if err != nil {
		return err
	}
	return l.Load(specs)
}

// LoadedModules lists /proc/modules names (for diagnostics).
func LoadedModules() ([]string, error) {
	f, err := os.Open("/proc/modules")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) > 0 {
			out = append(out, fs[0])
		}
	}
	return out, sc.Err()
}
