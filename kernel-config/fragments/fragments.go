// Package fragments holds Keel's guest kernel configuration fragments,
// embedded so that `go run ./cmd/keel-kernel` works from any directory.
//
// Layout (like Kata's tools/packaging/kernel/configs/fragments):
//
//	common/*.conf   every architecture, one file per feature
//	x86_64/*.conf   arm64/*.conf   per architecture
//	opt/*.conf      opt-in sets, selected as +name (+debug, +confidential)
//
// Every option is =y: the guest boots from a DAX root with no initramfs
// and loads no modules.
package fragments

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/keelvm/keel/kernel-config/kconfig"
)

//go:embed common/*.conf x86_64/*.conf arm64/*.conf opt/*.conf
var files embed.FS

// Arches are the architectures with a fragment directory.
var Arches = []string{"x86_64", "arm64"}

// DefaultSpec is the selection for arch when none is given.
func DefaultSpec(arch string) string { return "common," + arch }

// Known lists the names Select accepts.
func Known() []string {
	k := append([]string{"common"}, Arches...)
	opts, _ := fs.Glob(files, "opt/*.conf")
	for _, o := range opts {
		k = append(k, "+"+strings.TrimSuffix(path.Base(o), ".conf"))
	}
	return k
}

// Select parses the fragments named by spec, a comma-separated list of
// "common", an architecture ("x86_64"), an opt-in set ("+debug"), or a path
// to a .conf file on disk. Fragments are returned in spec order, files of a
// directory sorted by name.
func Select(spec string) ([]*kconfig.Fragment, error) {
	var out []*kconfig.Fragment
	for _, item := range strings.Split(spec, ",") {
		item = strings.TrimSpace(item)
		var names []string
		switch {
		case item == "":
			continue
		case strings.HasPrefix(item, "+"):
			n := "opt/" + item[1:] + ".conf"
			if _, err := fs.Stat(files, n); err != nil || strings.ContainsAny(item[1:], "/.") {
				return nil, fmt.Errorf("unknown opt-in fragment %q (known: %s)", item, strings.Join(Known(), ", "))
			}
			names = []string{n}
		case strings.HasSuffix(item, ".conf") || strings.ContainsRune(item, '/'):
			f, err := os.Open(item)
			if err != nil {
				return nil, fmt.Errorf("fragment file: %w", err)
			}
			frag, err := kconfig.ParseFragment(item, f)
			f.Close()
			if err != nil {
				return nil, err
			}
			out = append(out, frag)
			continue
		case item == "opt" || !isDir(item):
			return nil, fmt.Errorf("unknown fragment set %q (known: %s, or a path to a .conf file)", item, strings.Join(Known(), ", "))
		default:
			names, _ = fs.Glob(files, item+"/*.conf")
			sort.Strings(names)
		}
		for _, n := range names {
			frag, err := parseEmbedded(n)
			if err != nil {
				return nil, err
			}
			out = append(out, frag)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("fragment selection %q is empty", spec)
	}
	return out, nil
}

func isDir(name string) bool {
	st, err := fs.Stat(files, name)
	return err == nil && st.IsDir()
}

func parseEmbedded(name string) (*kconfig.Fragment, error) {
	f, err := files.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Positions read like paths in the repository.
	return kconfig.ParseFragment("kernel-config/fragments/"+name, f)
}
