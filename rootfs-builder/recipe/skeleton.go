package recipe

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"sort"
	"strings"

	"github.com/keelvm/keel/rootfs-builder/internal/confine"
)

// Minimal is the smallest useful guest: the agent as init, an /etc with
// just enough for name resolution and user lookups, and optional busybox.
type Minimal struct{}

// Name implements Recipe.
func (Minimal) Name() string { return "minimal" }

// skeletonDirs are created in every minimal rootfs; the agent mounts over
// dev, proc, sys, run and tmp at boot.
var skeletonDirs = []struct {
	path string
	perm os.FileMode
}{
	{"dev", 0o755}, {"proc", 0o555}, {"sys", 0o555}, {"run", 0o755},
	{"tmp", 0o1777}, {"etc", 0o755}, {"lib/modules", 0o755}, {"sbin", 0o755},
	{"bin", 0o755}, {"root", 0o700}, {"mnt", 0o755},
}

var skeletonFiles = []struct {
	path, content string
}{
	{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"},
	{"etc/group", "root:x:0:\nnogroup:x:65534:\n"},
	{"etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"},
	// Empty on purpose: the agent writes DNS servers from CreateSandbox.
	{"etc/resolv.conf", ""},
	{"etc/hostname", "keel\n"},
}

// Build implements Recipe.
func (Minimal) Build(ctx context.Context, dir string, opts Options) (*Result, error) {
	if opts.Agent == "" {
		return nil, fmt.Errorf("minimal recipe needs --agent")
	}
	if err := CheckStaticBinary(opts.Agent); err != nil {
		return nil, err
	}
	res := &Result{}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	for _, d := range skeletonDirs {
		if err := root.MkdirAll(d.path, 0o755); err != nil {
			return nil, err
		}
		// Chmod after MkdirAll: the umask must not change the image.
		if err := root.Chmod(d.path, d.perm|modeBits(d.perm)); err != nil {
			return nil, err
		}
	}
	for _, f := range skeletonFiles {
		if err := confine.WriteFile(root, f.path, []byte(f.content), 0o644); err != nil {
			return nil, err
		}
	}
	in, err := InstallAgent(dir, opts.Agent)
	if err != nil {
		return nil, err
	}
	res.Inputs = append(res.Inputs, in)
	if opts.Busybox != "" {
		in, err := InstallBusybox(ctx, dir, opts.Busybox)
		if err != nil {
			return nil, err
		}
		res.Inputs = append(res.Inputs, in)
	}
	return res, nil
}

// modeBits converts the permission-style sticky bit in a literal like
// 0o1777 into Go's fs.ModeSticky.
func modeBits(p os.FileMode) os.FileMode {
	if p&0o1000 != 0 {
		return os.ModeSticky
	}
	return 0
}

// copyFile copies src to name inside root. The destination is resolved
// through os.Root, so a tree whose /sbin is an absolute or escaping symlink
// (possible in an OCI image) cannot redirect the write onto the host.
func copyFile(root *os.Root, name, src string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return confine.Copy(root, name, in, perm)
}

// InstallAgent copies the (already checked) agent to /sbin/init and points
// /init at it, replacing whatever init the tree had.
func InstallAgent(dir, agent string) (Input, error) {
	if err := CheckStaticBinary(agent); err != nil {
		return Input{}, err
	}
	in, err := FileInput("agent", agent)
	if err != nil {
		return Input{}, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return Input{}, err
	}
	defer root.Close()
	// Debian's /sbin is a symlink to usr/sbin (merged /usr); os.Root follows
	// it inside the tree and refuses one that leaves it.
	if err := copyFile(root, "sbin/init", agent, 0o755); err != nil {
		return Input{}, fmt.Errorf("unable to install agent as /sbin/init: %w", err)
	}
	if err := root.RemoveAll("init"); err != nil {
		return Input{}, err
	}
	if err := root.Symlink("sbin/init", "init"); err != nil {
		return Input{}, fmt.Errorf("unable to create /init: %w", err)
	}
	return in, nil
}

// InstallBusybox installs a static busybox at /bin/busybox plus a symlink
// per applet (from `busybox --list-full`), never overwriting existing
// files such as the agent's /sbin/init.
func InstallBusybox(ctx context.Context, dir, busybox string) (Input, error) {
	if err := CheckStaticBinary(busybox); err != nil {
		return Input{}, fmt.Errorf("busybox: %w", err)
	}
	in, err := FileInput("busybox", busybox)
	if err != nil {
		return Input{}, err
	}
	out, err := exec.CommandContext(ctx, busybox, "--list-full").Output()
	if err != nil {
		return Input{}, fmt.Errorf("unable to list busybox applets: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return Input{}, err
	}
	defer root.Close()
	if err := copyFile(root, "bin/busybox", busybox, 0o755); err != nil {
		return Input{}, err
	}
	applets := strings.Fields(string(out))
	sort.Strings(applets)
	for _, a := range applets {
		a = path.Clean(a)
		if path.IsAbs(a) || a == ".." || strings.HasPrefix(a, "../") || a == "." || a == "bin/busybox" || a == "linuxrc" {
			continue
		}
		if _, err := root.Lstat(a); err == nil {
			continue
		}
		if err := root.MkdirAll(path.Dir(a), 0o755); err != nil {
			return Input{}, err
		}
		rel := relTo(path.Dir(a), "bin/busybox")
		if err := root.Symlink(rel, a); err != nil {
			return Input{}, err
		}
	}
	in.Note = fmt.Sprintf("%d applets", len(applets))
	return in, nil
}

// relTo returns the relative path from directory dir to target (both
// root-relative and clean): "busybox" from bin, "../bin/busybox" from sbin.
func relTo(dir, target string) string {
	if dir == "." {
		return target
	}
	d, t := strings.Split(dir, "/"), strings.Split(target, "/")
	i := 0
	for i < len(d) && i < len(t)-1 && d[i] == t[i] {
		i++
	}
	return strings.Repeat("../", len(d)-i) + strings.Join(t[i:], "/")
}
