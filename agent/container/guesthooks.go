package container

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// guestHookKinds are the subdirectories of CreateSandbox's guest_hook_path
// that Kata's agent scans (src/agent/src/sandbox.rs add_hooks).
var guestHookKinds = []string{"prestart", "poststart", "poststop"}

// scanGuestHooks reads Kata's guest hook layout: <dir>/<kind>/<file>, every
// regular executable file (symlinks and non-executables skipped) runs as
// path <dir>/<kind>/<file> with args [<file>, <kind>] and the default hook
// timeout. A missing kind directory has no hooks.
func scanGuestHooks(dir string) (*specs.Hooks, error) {
	if !filepath.IsAbs(dir) || strings.ContainsRune(dir, 0) {
		return nil, fmt.Errorf("guest_hook_path %q: must be an absolute path: %w", dir, ErrInvalid)
	}
	hooks := &specs.Hooks{}
	for _, kind := range guestHookKinds {
		ents, err := os.ReadDir(filepath.Join(dir, kind))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("guest_hook_path %q: unable to read %s hooks: %v: %w", dir, kind, err, ErrInvalid)
		}
		for _, e := range ents {
			if !e.Type().IsRegular() {
				continue
			}
			fi, err := e.Info()
			if err != nil || fi.Mode()&0o111 == 0 {
				continue
			}
			h := specs.Hook{Path: filepath.Join(dir, kind, e.Name()), Args: []string{e.Name(), kind}}
			switch kind {
			case "prestart":
				//lint:ignore SA1019 Kata's guest layout names prestart hooks
				hooks.Prestart = append(hooks.Prestart, h)
			case "poststart":
				hooks.Poststart = append(hooks.Poststart, h)
			case "poststop":
				hooks.Poststop = append(hooks.Poststop, h)
			}
		}
	}
	return hooks, nil
}

// addGuestHooks appends the sandbox's guest hooks after the spec's own.
// Kata appends guest prestart hooks to poststart when the spec has hooks of
// its own; Keel runs them as prestart hooks either way.
func addGuestHooks(spec *specs.Spec, g *specs.Hooks) {
	if g == nil {
		return
	}
	if spec.Hooks == nil {
		spec.Hooks = &specs.Hooks{}
	}
	//lint:ignore SA1019 Kata's guest layout names prestart hooks
	spec.Hooks.Prestart = append(spec.Hooks.Prestart, g.Prestart...)
	spec.Hooks.Poststart = append(spec.Hooks.Poststart, g.Poststart...)
	spec.Hooks.Poststop = append(spec.Hooks.Poststop, g.Poststop...)
}
