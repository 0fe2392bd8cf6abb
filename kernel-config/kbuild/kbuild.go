// Package kbuild turns fragments into a proven .config and a kernel image
// using the kernel's own make targets.
//
// Configure: `make allnoconfig` for the target ARCH, the merged fragment
// replaces the lines for the options it names, `make olddefconfig` resolves
// dependencies, then kconfig.Prove fails the run if any requested option
// was dropped, naming the unmet dependency.
//
// Build: Configure, then `make <image>` in an object directory shared per
// architecture (so a changed fragment rebuilds incrementally), and copies
// the image, vmlinux, .config and a manifest into <cache>/<digest>/, where digest
// covers the requested options, the architecture and the source version.
// A complete output directory is reused as is.
package kbuild

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/keelvm/keel/kernel-config/kconfig"
	"github.com/keelvm/keel/kernel-config/source"
)

// DefaultCache is where built kernels are kept.
const DefaultCache = "/var/cache/keel/kernel"

// layout is bumped when the output directory's contents change meaning.
const layout = "keel-kernel/1"

// Options say what to configure or build.
type Options struct {
	Source    *source.Tree
	Arch      string              // x86_64 or arm64
	Fragments []*kconfig.Fragment // merged in order
	Log       io.Writer           // progress; nil discards
}

func (o *Options) log() io.Writer {
	if o.Log == nil {
		return io.Discard
	}
	return o.Log
}

// DroppedError lists requested options that did not survive.
type DroppedError struct {
	Arch    string
	Dropped []kconfig.Dropped
}

func (e *DroppedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d requested option(s) dropped by Kconfig for ARCH=%s:", len(e.Dropped), e.Arch)
	for _, d := range e.Dropped {
		b.WriteString("\n  " + d.String())
	}
	return b.String()
}

// Config is a proven configuration.
type Config struct {
	Path      string            // the .config in the object directory
	Requested []kconfig.Setting // merged fragments
	Final     kconfig.Config
}

// Image returns the make target and the image path under arch/ for arch.
func Image(arch string) (target, path string, err error) {
	switch arch {
	case "x86_64":
		return "bzImage", "arch/x86/boot/bzImage", nil
	case "arm64":
		return "Image", "arch/arm64/boot/Image", nil
	}
	return "", "", fmt.Errorf("unsupported arch %q (want x86_64 or arm64)", arch)
}

// Configure writes a proven .config into objDir.
func Configure(ctx context.Context, o Options, objDir string) (*Config, error) {
	if _, _, err := Image(o.Arch); err != nil {
		return nil, err
	}
	requested, err := kconfig.Merge(o.Fragments...)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(objDir, 0o755); err != nil {
		return nil, err
	}
	if err := o.make(ctx, objDir, io.Discard, "allnoconfig"); err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(objDir, ".config")
	base, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(cfgPath, overlay(base, requested), 0o644); err != nil {
		return nil, err
	}
	if err := o.make(ctx, objDir, io.Discard, "olddefconfig"); err != nil {
		return nil, err
	}
	f, err := os.Open(cfgPath)
	if err != nil {
		return nil, err
	}
	final, err := kconfig.ParseConfig(cfgPath, f)
	f.Close()
	if err != nil {
		return nil, err
	}
	c := &Config{Path: cfgPath, Requested: requested, Final: final}
	if dropped := kconfig.Prove(requested, final, nil); len(dropped) > 0 {
		// Only now pay for reading the Kconfig tree (~1 s).
		tree, terr := kconfig.LoadTree(o.Source.Dir, o.Arch)
		if terr == nil {
			dropped = kconfig.Prove(requested, final, tree)
		}
		return c, &DroppedError{Arch: o.Arch, Dropped: dropped}
	}
	return c, nil
}

// overlay replaces base's lines for the requested options with the
// requested lines, appended at the end (Kconfig would otherwise warn about
// every reassignment).
func overlay(base []byte, requested []kconfig.Setting) []byte {
	named := map[string]bool{}
	for _, s := range requested {
		named[s.Name] = true
	}
	var out bytes.Buffer
	for _, line := range strings.SplitAfter(string(base), "\n") {
		if name := lineName(line); name != "" && named[name] {
			continue
		}
		out.WriteString(line)
	}
	out.WriteString("# Keel fragments\n")
	out.WriteString(kconfig.Render(requested))
	return out.Bytes()
}

func lineName(line string) string {
	t := strings.TrimSpace(line)
	t = strings.TrimPrefix(t, "# ")
	rest, ok := strings.CutPrefix(t, "CONFIG_")
	if !ok {
		return ""
	}
	if i := strings.IndexAny(rest, "= "); i > 0 {
		return rest[:i]
	}
	return ""
}

func (o *Options) make(ctx context.Context, objDir string, stdout io.Writer, args ...string) error {
	full := append([]string{"-C", o.Source.Dir, "ARCH=" + o.Arch, "O=" + objDir}, args...)
	cmd := exec.CommandContext(ctx, "make", full...)
	var stderr bytes.Buffer
	cmd.Stdout = stdout
	cmd.Stderr = io.MultiWriter(&stderr, o.log())
	if err := cmd.Run(); err != nil {
		tail := stderr.String()
		if len(tail) > 4000 {
			tail = tail[len(tail)-4000:]
		}
		return fmt.Errorf("make %s: %w\n%s", strings.Join(args, " "), err, tail)
	}
	return nil
}

// Manifest describes a built kernel; it is written as manifest.json.
type Manifest struct {
	Layout         string          `json:"layout"`
	Digest         string          `json:"digest"`
	Arch           string          `json:"arch"`
	SourcePackage  string          `json:"source_package,omitempty"`
	SourceVersion  string          `json:"source_version"`
	Fragments      []FragmentInfo  `json:"fragments"`
	Options        int             `json:"options_requested"`
	OptionsEnabled int             `json:"options_enabled"`
	Image          string          `json:"image"`
	ImageBytes     int64           `json:"image_bytes"`
	BuiltAt        time.Time       `json:"built_at"`
	BuildSeconds   float64         `json:"build_seconds"`
	Jobs           int             `json:"jobs"`
	Extra          json.RawMessage `json:"extra,omitempty"`
}

// FragmentInfo names a fragment and the sha256 of its settings.
type FragmentInfo struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
}

// Digest identifies a build: requested options, arch, source version.
func Digest(o Options) (string, error) {
	requested, err := kconfig.Merge(o.Fragments...)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%s\n%s\n", layout, o.Arch, o.Source.Package, o.Source.Version, kconfig.Digest(requested))
	return hex.EncodeToString(h.Sum(nil))[:20], nil
}

// Build returns the output directory for o under cache, building the
// kernel first unless a complete build with the same digest exists.
func Build(ctx context.Context, o Options, cache string, jobs int) (string, *Manifest, error) {
	target, imgRel, err := Image(o.Arch)
	if err != nil {
		return "", nil, err
	}
	digest, err := Digest(o)
	if err != nil {
		return "", nil, err
	}
	out := filepath.Join(cache, digest)
	if m, err := readManifest(out); err == nil {
		fmt.Fprintf(o.log(), "build: reusing %s (built %s)\n", out, m.BuiltAt.Format(time.RFC3339))
		return out, m, nil
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", nil, err
	}
	objDir := filepath.Join(cache, "obj-"+o.Arch)
	unlock, err := source.Lock(objDir + ".lock")
	if err != nil {
		return "", nil, err
	}
	defer unlock()
	if m, err := readManifest(out); err == nil { // built while we waited
		return out, m, nil
	}
	fmt.Fprintf(o.log(), "build: configuring ARCH=%s in %s\n", o.Arch, objDir)
	cfg, err := Configure(ctx, o, objDir)
	if err != nil {
		return "", nil, err
	}
	if jobs <= 0 {
		jobs = runtime.NumCPU()
	}
	fmt.Fprintf(o.log(), "build: %d options proven; make -j%d %s\n", len(cfg.Requested), jobs, target)
	start := time.Now()
	if err := o.makeWithProgress(ctx, objDir, start, fmt.Sprintf("-j%d", jobs), target); err != nil {
		return "", nil, err
	}
	elapsed := time.Since(start)

	tmp := out + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", nil, err
	}
	img := filepath.Base(imgRel)
	if err := copyFile(filepath.Join(objDir, imgRel), filepath.Join(tmp, img)); err != nil {
		return "", nil, err
	}
	if err := copyFile(cfg.Path, filepath.Join(tmp, "config")); err != nil {
		return "", nil, err
	}
	// The ELF kernel, for VMMs that boot it through the PVH entry point.
	if err := copyFile(filepath.Join(objDir, "vmlinux"), filepath.Join(tmp, "vmlinux")); err != nil {
		return "", nil, err
	}
	st, err := os.Stat(filepath.Join(tmp, img))
	if err != nil {
		return "", nil, err
	}
	m := &Manifest{
		Layout: layout, Digest: digest, Arch: o.Arch,
		SourcePackage: o.Source.Package, SourceVersion: o.Source.Version,
		Options: len(cfg.Requested), OptionsEnabled: countEnabled(cfg.Final),
		Image: img, ImageBytes: st.Size(),
		BuiltAt: time.Now().UTC(), BuildSeconds: elapsed.Round(time.Second).Seconds(), Jobs: jobs,
	}
	for _, f := range o.Fragments {
		m.Fragments = append(m.Fragments, FragmentInfo{Name: f.Name, SHA256: kconfig.Digest(f.Settings)})
	}
	b, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, "manifest.json"), append(b, '\n'), 0o644); err != nil {
		return "", nil, err
	}
	os.RemoveAll(out)
	if err := os.Rename(tmp, out); err != nil {
		return "", nil, err
	}
	return out, m, nil
}

func countEnabled(c kconfig.Config) int {
	n := 0
	for _, v := range c {
		if v == "y" {
			n++
		}
	}
	return n
}

// makeWithProgress runs make and prints a progress line every 15 s: the
// number of objects compiled so far and the elapsed time. The full output
// is kept in <objDir>/build.log.
func (o *Options) makeWithProgress(ctx context.Context, objDir string, start time.Time, args ...string) error {
	logf, err := os.Create(filepath.Join(objDir, "build.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	pr, pw := io.Pipe()
	var compiled atomic.Int64
	scanDone := make(chan struct{})
	go func() {
		defer close(scanDone)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			l := sc.Text()
			fmt.Fprintln(logf, l)
			if strings.HasPrefix(strings.TrimSpace(l), "CC ") {
				compiled.Add(1)
			}
		}
		io.Copy(io.Discard, pr)
	}()
	tick := time.NewTicker(15 * time.Second)
	defer tick.Stop()
	errc := make(chan error, 1)
	go func() {
		full := append([]string{"-C", o.Source.Dir, "ARCH=" + o.Arch, "O=" + objDir}, args...)
		cmd := exec.CommandContext(ctx, "make", full...)
		cmd.Stdout, cmd.Stderr = pw, pw
		err := cmd.Run()
		pw.Close()
		errc <- err
	}()
	for {
		select {
		case err := <-errc:
			<-scanDone
			if err != nil {
				return fmt.Errorf("make %s: %w (see %s)", strings.Join(args, " "), err, logf.Name())
			}
			fmt.Fprintf(o.log(), "build: done, %d objects compiled in %s\n", compiled.Load(), time.Since(start).Round(time.Second))
			return nil
		case <-tick.C:
			fmt.Fprintf(o.log(), "build: %d objects compiled, %s elapsed\n", compiled.Load(), time.Since(start).Round(time.Second))
		}
	}
}

func readManifest(dir string) (*Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	if m.Layout != layout {
		return nil, errors.New("old layout")
	}
	if _, err := os.Stat(filepath.Join(dir, m.Image)); err != nil {
		return nil, err
	}
	return &m, nil
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
