package recipe

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
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
	for _, d := range skeletonDirs {
		p := filepath.Join(dir, d.path)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return nil, err
		}
		// Chmod after MkdirAll: the umask must not change the image.
		if err := os.Chmod(p, d.perm|modeBits(d.perm)); err != nil {
			return nil, err
		}
	}
	for _, f := range skeletonFiles {
		if err := writeFile(filepath.Join(dir, f.path), []byte(f.content), 0o644); err != nil {
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

func writeFile(path string, data []byte, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(path, data, perm); err != nil {
		return err
	}
	return os.Chmod(path, perm)
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
	if err := root.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return err
	}
	if err := root.Remove(name); err != nil && !os.IsNotExist(err) {
		return err
	}
	out, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return root.Chmod(name, perm)
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
		a = filepath.Clean(a)
		if filepath.IsAbs(a) || strings.HasPrefix(a, "..") || a == "bin/busybox" || a == "linuxrc" {
			continue
		}
		p := filepath.Join(dir, a)
		if _, err := os.Lstat(p); err == nil {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return Input{}, err
		}
		rel, err := filepath.Rel(filepath.Dir(p), filepath.Join(dir, "bin/busybox"))
		if err != nil {
			return Input{}, err
		}
		if err := os.Symlink(rel, p); err != nil {
			return Input{}, err
		}
	}
	in.Note = fmt.Sprintf("%d applets", len(applets))
	return in, nil
}
