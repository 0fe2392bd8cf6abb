package confine

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// pathCalls are the calls that resolve a path with the host's "/" (or the
// cwd): on a staging path they would follow the image's symlinks out of
// the tree. Staging-tree code uses an *os.Root and this package instead.
var pathCalls = map[string]map[string]bool{
	"os": set("Chdir", "Chmod", "Chown", "Chtimes", "Create", "CreateTemp", "DirFS", "Lchown", "Link", "Lstat",
		"Mkdir", "MkdirAll", "MkdirTemp", "Open", "OpenFile", "ReadDir", "ReadFile", "Readlink", "Remove",
		"RemoveAll", "Rename", "Stat", "Symlink", "Truncate", "WriteFile", "CopyFS"),
	"filepath": set("Walk", "WalkDir", "Glob", "EvalSymlinks", "Abs"),
	"unix": set("Open", "Stat", "Lstat", "Mkdir", "Mknod", "Chmod", "Chown", "Lchown", "Link", "Symlink",
		"Rename", "Unlink", "Rmdir", "Truncate", "Utimes", "UtimesNano", "Lsetxattr", "Setxattr", "Lgetxattr",
		"Getxattr", "Llistxattr", "Listxattr", "Access", "Statfs"),
	"syscall": set("Open", "Stat", "Lstat", "Mkdir", "Mknod", "Chmod", "Chown", "Lchown", "Link", "Symlink",
		"Rename", "Unlink", "Rmdir", "Truncate", "Utimes", "UtimesNano", "Access"),
}

func set(names ...string) map[string]bool {
	m := map[string]bool{}
	for _, n := range names {
		m[n] = true
	}
	return m
}

// allowed are the plain path calls that never see a staging path, keyed
// "dir/file.go:Func: pkg.Call", each with why. A new plain call fails the
// test until it is moved onto the root or listed here with a reason; an
// entry no longer needed fails it too, so the list stays true.
var allowed = map[string]string{
	// Host inputs chosen by the user (agent, busybox, modules tree, image).
	"recipe/agent.go:CheckStaticBinary: os.Stat":   "the agent/busybox binary on the host",
	"recipe/recipe.go:FileInput: os.Open":          "hashes a host input file",
	"recipe/skeleton.go:copyFile: os.Open":         "reads the host agent/busybox; the write goes through the root",
	"kmod/kmod.go:Resolve: os.Open":                "the host modules tree's modules.dep",
	"kmod/kmod.go:readBuiltin: os.ReadFile":        "the host modules tree's modules.builtin",
	"kmod/kmod.go:Install: os.Open":                "the host modules tree's modules.dep",
	"kmod/kmod.go:Install: os.ReadFile":            "the host modules tree's modules.builtin",
	"kmod/kmod.go:decompress: os.Open":             "a module file in the host modules tree",
	"oci/image.go:Open: os.Stat":                   "the image source (layout dir or tarball)",
	"oci/image.go:Open: os.Open":                   "a blob of an OCI layout dir (names cleaned by CleanName)",
	"oci/image.go:tarMember: os.Open":              "the image tarball",
	"recipe/debian.go:SystemMirror: filepath.Glob": "the host's /etc/apt",
	"recipe/debian.go:SystemMirror: os.Open":       "the host's /etc/apt",
	// The Debian bootstrap cache: a tree we build from Debian's mirror,
	// never an untrusted image; copied into the stage with cp -a.
	"recipe/debian.go:Build: os.MkdirAll":                     "the bootstrap cache directory",
	"recipe/debian.go:Build: os.OpenFile":                     "the bootstrap cache lock",
	"recipe/debian.go:Build: os.Stat":                         "the bootstrap cache's complete marker",
	"recipe/debian.go:bootstrap: os.MkdirAll":                 "the bootstrap cache",
	"recipe/debian.go:bootstrap: os.RemoveAll":                "the bootstrap cache's own temporary tree",
	"recipe/debian.go:bootstrap: os.Rename":                   "the bootstrap cache",
	"recipe/debian.go:bootstrap: os.WriteFile":                "the bootstrap cache's complete marker",
	"build/build.go:Validate: os.Stat":                        "the output directory",
	"build/build.go:Validate: os.Lstat":                       "the output path",
	"build/build.go:Run: os.MkdirTemp":                        "creates the staging directory itself",
	"build/build.go:Run: os.RemoveAll":                        "removes the staging directory or a failed dir output (RemoveAll never follows symlinks)",
	"build/build.go:Run: os.Chmod":                            "the staging directory itself, just created",
	"build/build.go:Run: os.Rename":                           "moves the staging directory itself to the output",
	"build/build.go:Run: os.Remove":                           "the output artifact and its manifest",
	"build/inspect.go:Inspect: os.Stat":                       "the artifact being inspected",
	"build/inspect.go:Inspect: os.Open":                       "the artifact being inspected",
	"image/image.go:Build: os.Stat":                           "the finished image file",
	"image/image.go:checkOutputDir: os.Stat":                  "the output directory",
	"image/image.go:checkOutputDir: unix.Access":              "the output directory",
	"image/image.go:mkfsErofs: os.Stat":                       "the image file mkfs wrote",
	"cpio/tree.go:TreeEntries: os.Stat":                       "the tree root itself; entries are read through a root",
	"cpio/cpio.go:writeFile: os.Open":                         "Entry.Source: a host file named by the caller (TreeEntries entries open through a root)",
	"manifest/manifest.go:Read: os.ReadFile":                  "the manifest next to an artifact",
	"manifest/manifest.go:FileDigest: os.Open":                "hashes the artifact",
	"internal/atomicfile/atomicfile.go:Create: os.CreateTemp": "temporary artifact next to the output",
	"internal/atomicfile/atomicfile.go:Commit: os.Rename":     "renames the artifact into place",
	"internal/atomicfile/atomicfile.go:Commit: os.Open":       "fsyncs the output directory",
	"internal/atomicfile/atomicfile.go:Abort: os.Remove":      "removes its own temporary file",
	"pfn/write.go:Wrap: os.Open":                              "the bare filesystem image",
	"pfn/write.go:ReadFile: os.Open":                          "an artifact being inspected",
	// The xattr calls have no *at form before Linux 6.13; procPath names
	// the entry through a root-opened directory fd and a single component.
	"internal/confine/confine.go:Lsetxattr: unix.Lsetxattr": "a /proc/self/fd/<dirfd>/<base> path (procPath)",
	"internal/confine/confine.go:Xattrs: unix.Llistxattr":   "a /proc/self/fd/<dirfd>/<base> path (procPath)",
	"internal/confine/confine.go:Xattrs: unix.Lgetxattr":    "a /proc/self/fd/<dirfd>/<base> path (procPath)",
}

// TestNoPlainPathCalls walks rootfs-builder and cmd/keel-rootfs (tests
// and test-input generators excepted) for plain path calls.
func TestNoPlainPathCalls(t *testing.T) {
	base := filepath.Join("..", "..")
	dirs := []string{base, filepath.Join(base, "..", "cmd", "keel-rootfs")}
	found := map[string]bool{}
	fset := token.NewFileSet()
	for _, d := range dirs {
		err := filepath.WalkDir(d, func(p string, de os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if de.IsDir() && (de.Name() == "testdata" || de.Name() == "ocitest" || de.Name() == "vmtest") {
				return filepath.SkipDir
			}
			if de.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return nil
			}
			f, err := parser.ParseFile(fset, p, nil, 0)
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(base, p)
			for _, decl := range f.Decls {
				fn, ok := decl.(*ast.FuncDecl)
				if !ok || fn.Body == nil {
					continue
				}
				ast.Inspect(fn.Body, func(n ast.Node) bool {
					call, ok := n.(*ast.CallExpr)
					if !ok {
						return true
					}
					sel, ok := call.Fun.(*ast.SelectorExpr)
					if !ok {
						return true
					}
					pkg, ok := sel.X.(*ast.Ident)
					if !ok || !pathCalls[pkg.Name][sel.Sel.Name] {
						return true
					}
					found[fmt.Sprintf("%s:%s: %s.%s", filepath.ToSlash(rel), fn.Name.Name, pkg.Name, sel.Sel.Name)] = true
					return true
				})
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	var bad, stale []string
	for k := range found {
		if allowed[k] == "" {
			bad = append(bad, k)
		}
	}
	for k, why := range allowed {
		if why != "" && !found[k] {
			stale = append(stale, k)
		}
	}
	sort.Strings(bad)
	sort.Strings(stale)
	if len(bad) > 0 {
		t.Errorf("plain path calls in rootfs-builder; staging-tree operations must go through an *os.Root "+
			"(rootfs-builder/internal/confine), or list a host-only call in allowed with the reason:\n\t%s", strings.Join(bad, "\n\t"))
	}
	if len(stale) > 0 {
		t.Errorf("allowed lists calls that no longer exist; remove them:\n\t%s", strings.Join(stale, "\n\t"))
	}
}
