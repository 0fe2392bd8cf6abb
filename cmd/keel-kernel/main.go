// Command keel-kernel configures, proves and builds Keel's guest kernel
// from Debian's linux-source package and the fragments in kernel-config/.
//
//	keel-kernel source [--package linux-source-6.1]
//	keel-kernel config [--source DIR | --source-deb PKG] [--arch x86_64] [--fragments common,x86_64,+debug] -o OUT/.config
//	keel-kernel build  [--source DIR | --source-deb PKG] [--arch x86_64] [--fragments ...] [--cache DIR] [-j N]
//	keel-kernel check  --config FILE | --running [--arch x86_64] [--fragments ...]
//
// build prints the kernel image's path as the last line of stdout; progress
// goes to stderr. Exit codes: 0 ok, 1 failure, 2 usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/keelvm/keel/kernel-config/fragments"
	"github.com/keelvm/keel/kernel-config/kbuild"
	"github.com/keelvm/keel/kernel-config/kconfig"
	"github.com/keelvm/keel/kernel-config/required"
	"github.com/keelvm/keel/kernel-config/source"
)

// errUsage marks errors that exit with status 2.
var errUsage = errors.New("usage")

type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }
func (e *usageError) Unwrap() error { return errUsage }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

const usage = `usage: keel-kernel <command> [flags]

commands:
  source   install linux-source (apt-get) if missing and extract it into the cache
  config   write a proven .config from the fragments (-o FILE)
  build    configure, prove and build the kernel; prints the image path last
  check    verify a .config (--config FILE) or the running kernel (--running)

run "keel-kernel <command> -h" for the flags of a command.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, errUsage) || errors.Is(err, flag.ErrHelp):
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "keel-kernel:", err)
		}
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "keel-kernel:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usagef("missing command")
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "source":
		return cmdSource(ctx, args, stdout, stderr)
	case "config":
		return cmdConfig(ctx, args, stdout, stderr)
	case "build":
		return cmdBuild(ctx, args, stdout, stderr)
	case "check":
		return cmdCheck(args, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return usagef("unknown command %q", cmd)
}

// common holds the flags shared by config, build and check.
type common struct {
	srcDir, srcDeb, arch, frags, cache string
}

func (c *common) register(fs *flag.FlagSet, withSource bool) {
	if withSource {
		fs.StringVar(&c.srcDir, "source", "", "kernel source tree `DIR` (instead of --source-deb)")
		fs.StringVar(&c.srcDeb, "source-deb", source.DefaultPackage, "Debian source `PACKAGE`, installed and extracted if needed")
		fs.StringVar(&c.cache, "source-cache", source.DefaultCache, "where source trees are extracted")
	}
	fs.StringVar(&c.arch, "arch", "x86_64", "target architecture: x86_64 or arm64")
	fs.StringVar(&c.frags, "fragments", "", "comma-separated fragment sets: common, ARCH, +OPTIN or FILE.conf (default common,ARCH)")
}

func (c *common) fragments() ([]*kconfig.Fragment, error) {
	if _, _, err := kbuild.Image(c.arch); err != nil {
		return nil, usagef("%v", err)
	}
	spec := c.frags
	if spec == "" {
		spec = fragments.DefaultSpec(c.arch)
	}
	return fragments.Select(spec)
}

func (c *common) options(ctx context.Context, log io.Writer) (kbuild.Options, error) {
	frags, err := c.fragments()
	if err != nil {
		return kbuild.Options{}, err
	}
	if _, err := kconfig.Merge(frags...); err != nil {
		return kbuild.Options{}, err
	}
	var tree *source.Tree
	if c.srcDir != "" {
		tree, err = source.FromDir(c.srcDir)
	} else {
		tree, err = source.Ensure(ctx, c.srcDeb, c.cache, log)
	}
	if err != nil {
		return kbuild.Options{}, err
	}
	return kbuild.Options{Source: tree, Arch: c.arch, Fragments: frags, Log: log}, nil
}

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("keel-kernel "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

func cmdSource(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("source", stderr)
	pkg := fs.String("package", source.DefaultPackage, "Debian source `PACKAGE`")
	cache := fs.String("cache", source.DefaultCache, "where source trees are extracted")
	if err := parse(fs, args); err != nil {
		return err
	}
	tree, err := source.Ensure(ctx, *pkg, *cache, stderr)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tree.Dir)
	return nil
}

func cmdConfig(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("config", stderr)
	var c common
	c.register(fs, true)
	out := fs.String("o", "", "write the proven .config to `FILE` (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return usagef("config: -o FILE is required")
	}
	o, err := c.options(ctx, stderr)
	if err != nil {
		return err
	}
	obj, err := os.MkdirTemp("", "keel-kernel-config-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(obj)
	cfg, err := kbuild.Configure(ctx, o, obj)
	if err != nil {
		return err
	}
	if dir := filepath.Dir(*out); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	b, err := os.ReadFile(cfg.Path)
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out, b, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "config: all %d requested options proven (ARCH=%s, %s %s)\n", len(cfg.Requested), o.Arch, o.Source.Package, o.Source.Version)
	fmt.Fprintln(stdout, *out)
	return nil
}

func cmdBuild(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("build", stderr)
	var c common
	c.register(fs, true)
	cache := fs.String("cache", kbuild.DefaultCache, "where built kernels are kept")
	jobs := fs.Int("j", 0, "parallel make jobs (default: number of CPUs)")
	if err := parse(fs, args); err != nil {
		return err
	}
	o, err := c.options(ctx, stderr)
	if err != nil {
		return err
	}
	dir, m, err := kbuild.Build(ctx, o, *cache, *jobs)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "build: %s (%d bytes, %d options requested, %d =y, built in %.0fs)\n", dir, m.ImageBytes, m.Options, m.OptionsEnabled, m.BuildSeconds)
	fmt.Fprintln(stdout, filepath.Join(dir, m.Image))
	return nil
}

func cmdCheck(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("check", stderr)
	var c common
	c.register(fs, false)
	file := fs.String("config", "", "a .config `FILE` to verify")
	running := fs.Bool("running", false, "verify the running kernel's "+required.ConfigGz)
	if err := parse(fs, args); err != nil {
		return err
	}
	if (*file == "") == !*running {
		return usagef("check: give exactly one of --config FILE or --running")
	}
	if *running {
		missing, err := required.CheckRunning()
		if err != nil {
			return err
		}
		for _, m := range missing {
			fmt.Fprintln(stdout, m)
		}
		if len(missing) > 0 {
			return fmt.Errorf("running kernel lacks %d required option(s)", len(missing))
		}
		fmt.Fprintln(stderr, "check: running kernel has every required option")
		return nil
	}
	frags, err := c.fragments()
	if err != nil {
		return err
	}
	requested, err := kconfig.Merge(frags...)
	if err != nil {
		return err
	}
	f, err := os.Open(*file)
	if err != nil {
		return err
	}
	final, err := kconfig.ParseConfig(*file, f)
	f.Close()
	if err != nil {
		return err
	}
	dropped := kconfig.Prove(requested, final, nil)
	for _, d := range dropped {
		fmt.Fprintln(stdout, d)
	}
	if len(dropped) > 0 {
		return fmt.Errorf("%s lacks %d of %d requested option(s)", *file, len(dropped), len(requested))
	}
	fmt.Fprintf(stderr, "check: %s has all %d requested options\n", *file, len(requested))
	return nil
}
