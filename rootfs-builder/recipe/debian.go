package recipe

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Debian bootstraps a minbase Debian with mmdebstrap (preferred, faster)
// or debootstrap, caches the result, and installs the agent as init.
type Debian struct{}

// Name implements Recipe.
func (Debian) Name() string { return "debian" }

// DefaultRelease is used when Options.Release is empty.
const DefaultRelease = "bookworm"

// DefaultCacheDir holds bootstraps keyed by release, variant and mirror.
const DefaultCacheDir = "/var/cache/keel"

const debianVariant = "minbase"

// trimPaths are removed from the bootstrap: documentation, translations
// and package caches nobody needs in a VM rootfs.
var trimPaths = []string{
	"usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
	"usr/share/lintian", "usr/share/linda", "var/cache/apt", "var/lib/apt/lists",
	"var/cache/debconf/templates.dat-old", "var/log",
}

var releaseRE = regexp.MustCompile(`^[a-z][a-z0-9.-]{0,31}$`)

// packageRE is Debian policy's package name (lower case, digits, + - .).
var packageRE = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]{1,99}$`)

// packageSet checks the extra packages and returns them sorted and
// deduplicated, so that the same set always names the same cache entry.
func packageSet(pkgs []string) ([]string, error) {
	out := make([]string, 0, len(pkgs))
	for _, p := range pkgs {
		if !packageRE.MatchString(p) {
			return nil, fmt.Errorf("invalid Debian package name %q", p)
		}
		out = append(out, p)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// Build implements Recipe.
func (Debian) Build(ctx context.Context, dir string, opts Options) (*Result, error) {
	if opts.Agent == "" {
		return nil, fmt.Errorf("debian recipe needs --agent")
	}
	if err := CheckStaticBinary(opts.Agent); err != nil {
		return nil, err
	}
	release := opts.Release
	if release == "" {
		release = DefaultRelease
	}
	if !releaseRE.MatchString(release) {
		return nil, fmt.Errorf("invalid Debian release %q", release)
	}
	pkgs, err := packageSet(opts.Packages)
	if err != nil {
		return nil, err
	}
	mirror := opts.Mirror
	if mirror == "" {
		m, err := SystemMirror("/etc/apt")
		if err != nil {
			return nil, err
		}
		mirror = m
	}
	cacheRoot := opts.CacheDir
	if cacheRoot == "" {
		cacheRoot = DefaultCacheDir
	}
	key := release + "\x00" + debianVariant + "\x00" + mirror
	if len(pkgs) > 0 {
		// Without extra packages the key (and so the cache) is the one
		// older builds made.
		key += "\x00" + strings.Join(pkgs, ",")
	}
	sum := sha256.Sum256([]byte(key))
	cache := filepath.Join(cacheRoot, "debootstrap", release+"-"+debianVariant+"-"+hex.EncodeToString(sum[:6]))
	tree := filepath.Join(cache, "rootfs")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, err
	}
	// One bootstrap per cache entry at a time; others wait and reuse it.
	lock, err := os.OpenFile(filepath.Join(cache, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("locking %s: %w", cache, err)
	}
	if _, err := os.Stat(filepath.Join(cache, "complete")); err != nil {
		if err := bootstrap(ctx, cache, release, mirror, pkgs, opts); err != nil {
			return nil, err
		}
	} else {
		opts.progress("using cached bootstrap %s", cache)
	}
	opts.progress("copying bootstrap into %s", dir)
	// cp -a keeps owners, modes, xattrs and hard links of the cached tree.
	if out, err := exec.CommandContext(ctx, "cp", "-a", tree+"/.", dir+"/").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("copying cached bootstrap: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if err := ensureMountPoints(dir); err != nil {
		return nil, err
	}
	in, err := InstallAgent(dir, opts.Agent)
	if err != nil {
		return nil, err
	}
	note := release + " " + debianVariant
	if len(pkgs) > 0 {
		note += " + " + strings.Join(pkgs, ",")
	}
	return &Result{Inputs: []Input{
		{Role: "debian", Path: mirror, Note: note + " (cache " + cache + ")"},
		in,
	}}, nil
}

// bootstrap runs mmdebstrap or debootstrap into cache/rootfs.tmp, trims it
// and marks it complete; a failed run leaves no "complete" marker.
func bootstrap(ctx context.Context, cache, release, mirror string, pkgs []string, opts Options) error {
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(cache, "rootfs.tmp")
	os.RemoveAll(tmp)
	var include []string
	if len(pkgs) > 0 {
		include = []string{"--include=" + strings.Join(pkgs, ",")}
	}
	var cmd *exec.Cmd
	if p, err := exec.LookPath("mmdebstrap"); err == nil {
		cmd = exec.CommandContext(ctx, p, append(append([]string{"--variant=" + debianVariant, "--mode=root"}, include...), release, tmp, mirror)...)
	} else if p, err := exec.LookPath("debootstrap"); err == nil {
		cmd = exec.CommandContext(ctx, p, append(append([]string{"--variant=" + debianVariant}, include...), release, tmp, mirror)...)
	} else {
		return fmt.Errorf("debian recipe needs mmdebstrap or debootstrap (apt-get install mmdebstrap)")
	}
	opts.progress("bootstrapping Debian %s from %s with %s (this takes a while)", release, mirror, filepath.Base(cmd.Path))
	out, err := cmd.CombinedOutput()
	if err != nil {
		os.RemoveAll(tmp)
		tail := string(out)
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return fmt.Errorf("%s failed: %v\n%s", filepath.Base(cmd.Path), err, tail)
	}
	for _, p := range trimPaths {
		if err := os.RemoveAll(filepath.Join(tmp, p)); err != nil {
			return err
		}
	}
	for _, d := range []string{"var/cache/apt/archives/partial", "var/lib/apt/lists/partial", "var/log"} {
		os.MkdirAll(filepath.Join(tmp, d), 0o755)
	}
	final := filepath.Join(cache, "rootfs")
	os.RemoveAll(final)
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(cache, "complete"), []byte(release+" "+mirror+"\n"), 0o644)
}

// SystemMirror returns the first Debian archive URI configured for apt in
// etcApt (sources.list, sources.list.d/*.list and deb822 *.sources).
func SystemMirror(etcApt string) (string, error) {
	files := []string{filepath.Join(etcApt, "sources.list")}
	more, _ := filepath.Glob(filepath.Join(etcApt, "sources.list.d", "*"))
	files = append(files, more...)
	for _, f := range files {
		if !strings.HasSuffix(f, ".list") && !strings.HasSuffix(f, ".sources") {
			continue
		}
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			var uri string
			if rest, ok := strings.CutPrefix(line, "URIs:"); ok {
				uri = strings.Fields(rest + " x")[0]
			} else if rest, ok := strings.CutPrefix(line, "deb "); ok {
				for _, fld := range strings.Fields(rest) {
					if strings.Contains(fld, "://") {
						uri = fld
						break
					}
				}
			}
			if uri != "" && uri != "x" && !strings.Contains(uri, "security") {
				fh.Close()
				return uri, nil
			}
		}
		fh.Close()
	}
	return "", fmt.Errorf("no Debian mirror found in %s; pass --mirror URL", etcApt)
}
