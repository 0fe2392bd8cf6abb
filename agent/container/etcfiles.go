package container

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The sandbox's /etc files. CreateSandbox writes them under
// StateRoot/sandbox (Kata's agent keeps resolv.conf in
// /run/kata-containers/sandbox); CreateContainer bind-mounts them read-only
// into containers whose spec does not mount those paths itself (Kata's
// runtime passes the kubelet's hosts, hostname and resolv.conf as mounts,
// which win).
const (
	etcResolvConf = "/etc/resolv.conf"
	etcHosts      = "/etc/hosts"
	etcHostname   = "/etc/hostname"
)

// writeSandboxFiles writes into dir resolv.conf from the dns lines (only
// when there are some, as Kata: each line trimmed), hosts (localhost, and
// the hostname on 127.0.1.1 as Debian does) and hostname (when set). It
// returns the files by container path; on error nothing is left.
func writeSandboxFiles(dir, hostname string, dns []string) (_ map[string]string, retErr error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("unable to create sandbox dir: %w", err)
	}
	files := map[string]string{}
	defer func() {
		if retErr != nil {
			removeSandboxFiles(files)
		}
	}()
	write := func(dest, content string) error {
		p := filepath.Join(dir, filepath.Base(dest))
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return fmt.Errorf("unable to write %s: %w", p, err)
		}
		files[dest] = p
		return nil
	}
	if len(dns) > 0 {
		lines := make([]string, len(dns))
		for i, l := range dns {
			lines[i] = strings.TrimSpace(l)
		}
		if err := write(etcResolvConf, strings.Join(lines, "\n")+"\n"); err != nil {
			return nil, err
		}
	}
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	if hostname != "" {
		hosts += "127.0.1.1\t" + hostname + "\n"
		if err := write(etcHostname, hostname+"\n"); err != nil {
			return nil, err
		}
	}
	if err := write(etcHosts, hosts); err != nil {
		return nil, err
	}
	return files, nil
}

func removeSandboxFiles(files map[string]string) {
	for _, p := range files {
		os.Remove(p)
	}
}

// addSandboxMounts bind-mounts the sandbox files into spec, read-only,
// unless the spec mounts the path itself. hosts and hostname only go where
// the rootfs has a regular file to mount over: a read-only image could not
// get a new mount point, and their absence must not fail the container.
func addSandboxMounts(spec *specs.Spec, files map[string]string) {
	for _, dest := range []string{etcResolvConf, etcHosts, etcHostname} {
		src, ok := files[dest]
		if !ok || slices.ContainsFunc(spec.Mounts, func(m specs.Mount) bool { return filepath.Clean(m.Destination) == dest }) {
			continue
		}
		if dest != etcResolvConf && spec.Root != nil {
			if fi, err := os.Lstat(filepath.Join(spec.Root.Path, dest)); err != nil || !fi.Mode().IsRegular() {
				continue
			}
		}
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: dest, Type: "bind", Source: src, Options: []string{"rbind", "ro"}})
	}
}
