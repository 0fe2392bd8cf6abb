// Command keel-rootfs builds root filesystems for Keel guests: a
// reproducible ext4/erofs image (optionally with an NVDIMM DAX header), a
// cpio initrd, or a plain directory, from the minimal, oci or debian recipe.
//
//	keel-rootfs build --recipe minimal --agent build/keel-agent --output image --fs ext4 --dax -o build/rootfs.img
//	keel-rootfs inspect build/rootfs.img
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/keelvm/keel/rootfs-builder/build"
	"github.com/keelvm/keel/rootfs-builder/cpio"
	"github.com/keelvm/keel/rootfs-builder/image"
	"github.com/keelvm/keel/rootfs-builder/pfn"
	"github.com/keelvm/keel/rootfs-builder/recipe"
)

const usage = `usage:
  keel-rootfs build --recipe minimal|oci|debian --agent PATH --output image|initrd|dir
                    [--fs ext4|erofs] [--dax [--dax-mode ram|pmem]] [--size SIZE] [--busybox[=PATH]]
                    [--oci PATH [--platform OS/ARCH[/VARIANT]] [--max-unpacked-size SIZE] [--max-files N]
                     [--keep-selinux-labels]] [--release R] [--mirror URL]
                    [--modules-dir DIR --modules a,b] [--compression gzip|zstd|none] -o OUT
  keel-rootfs inspect ARTIFACT
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run returns the exit status: 0 success, 1 failure, 2 usage error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "build":
		return runBuild(ctx, args[1:], stderr)
	case "inspect":
		return runInspect(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "keel-rootfs: unknown command %q\n%s", args[0], usage)
	return 2
}

// busyboxFlag accepts --busybox (use /bin/busybox) or --busybox=PATH.
type busyboxFlag struct{ path string }

func (b *busyboxFlag) String() string { return b.path }
func (b *busyboxFlag) Set(s string) error {
	switch s {
	case "true":
		b.path = "/bin/busybox"
	case "false":
		b.path = ""
	default:
		b.path = s
	}
	return nil
}
func (b *busyboxFlag) IsBoolFlag() bool { return true }

// parseSize accepts bytes or a K/M/G suffix (powers of 1024).
func parseSize(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	mult := int64(1)
	switch strings.ToUpper(s[len(s)-1:]) {
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	}
	if mult != 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > (1<<50)/mult {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	return n * mult, nil
}

func runBuild(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		c       build.Config
		fsType  = fs.String("fs", "ext4", "image filesystem: ext4 or erofs")
		size    = fs.String("size", "", "filesystem size (e.g. 256M); default: content + headroom")
		comp    = fs.String("compression", "gzip", "initrd compression: gzip, zstd or none")
		daxMode = fs.String("dax-mode", "", "with --dax: ram (struct pages in guest RAM, Kata's layout; default) or pmem (on the device)")
		modules = fs.String("modules", "", "comma-separated kernel modules (with --modules-dir)")
		maxSize = fs.String("max-unpacked-size", "", "oci recipe: cap on the image's total unpacked file size (e.g. 32G; default 16G)")
		include = fs.String("include", "", "debian recipe: comma-separated extra packages (e.g. runc,crun)")
		busy    busyboxFlag
	)
	fs.StringVar(&c.Recipe, "recipe", "minimal", "recipe: "+strings.Join(recipe.Names(), ", "))
	fs.StringVar(&c.Agent, "agent", "", "static keel-agent binary, installed as /sbin/init")
	fs.StringVar(&c.Output, "output", "image", "artifact kind: image, initrd or dir")
	fs.StringVar(&c.Out, "o", "", "output path")
	fs.BoolVar(&c.DAX, "dax", false, "prepend the NVDIMM PFN info block (fs at 2 MiB) for -device nvdimm")
	fs.Var(&busy, "busybox", "install static busybox (default /bin/busybox, or --busybox=PATH)")
	fs.StringVar(&c.OCI, "oci", "", "OCI image layout dir or docker save tarball (oci recipe)")
	fs.StringVar(&c.Platform, "platform", "", "oci recipe: OS/ARCH[/VARIANT] to take from a multi-platform image (default linux/"+runtime.GOARCH+")")
	fs.Int64Var(&c.MaxFiles, "max-files", 0, "oci recipe: cap on the number of entries the image unpacks to (default 1048576)")
	fs.BoolVar(&c.KeepSELinux, "keep-selinux-labels", false, "oci recipe: keep security.selinux xattrs from the layers (dropped by default)")
	fs.StringVar(&c.Release, "release", recipe.DefaultRelease, "Debian release (debian recipe)")
	fs.StringVar(&c.Mirror, "mirror", "", "Debian mirror URL (default: from /etc/apt)")
	fs.StringVar(&c.CacheDir, "cache-dir", recipe.DefaultCacheDir, "cache directory")
	fs.StringVar(&c.ModulesDir, "modules-dir", "", "kernel modules tree (/lib/modules/<version>) with modules.dep")
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "keel-rootfs build: unexpected arguments %q\n", fs.Args())
		return 2
	}
	c.Busybox = busy.path
	if *include != "" {
		c.Packages = strings.Split(*include, ",")
	}
	var err error
	if c.Size, err = parseSize(*size); err != nil {
		fmt.Fprintf(stderr, "keel-rootfs build: --size: %v\n", err)
		return 2
	}
	if c.MaxUnpackedSize, err = parseSize(*maxSize); err != nil {
		fmt.Fprintf(stderr, "keel-rootfs build: --max-unpacked-size: %v\n", err)
		return 2
	}
	if c.MaxFiles < 0 {
		fmt.Fprintf(stderr, "keel-rootfs build: --max-files must be positive\n")
		return 2
	}
	if c.Output == build.OutputImage {
		if c.FS, err = image.ParseFS(*fsType); err != nil {
			fmt.Fprintf(stderr, "keel-rootfs build: %v\n", err)
			return 2
		}
	}
	switch *daxMode {
	case "":
	case "ram":
		c.DAXMode = pfn.ModeRAM
	case "pmem":
		c.DAXMode = pfn.ModePMEM
	default:
		fmt.Fprintf(stderr, "keel-rootfs build: unknown --dax-mode %q (want ram or pmem)\n", *daxMode)
		return 2
	}
	if c.DAXMode != pfn.ModeNone && !c.DAX {
		fmt.Fprintf(stderr, "keel-rootfs build: --dax-mode needs --dax\n")
		return 2
	}
	if c.Compression, err = cpio.ParseCompression(*comp); err != nil {
		fmt.Fprintf(stderr, "keel-rootfs build: %v\n", err)
		return 2
	}
	if *modules != "" {
		c.Modules = strings.Split(*modules, ",")
	}
	// Unset SOURCE_DATE_EPOCH: an oci build takes its epoch from the image.
	c.EpochFromImage = os.Getenv("SOURCE_DATE_EPOCH") == ""
	if c.Epoch, err = cpio.SourceDateEpoch(); err != nil {
		fmt.Fprintf(stderr, "keel-rootfs build: %v\n", err)
		return 2
	}
	c.Progress = func(format string, args ...any) {
		fmt.Fprintf(stderr, "keel-rootfs: "+format+"\n", args...)
	}
	if _, err := build.Run(ctx, c); err != nil {
		fmt.Fprintf(stderr, "keel-rootfs build: %v\n", err)
		if errors.Is(err, build.ErrUsage) {
			return 2
		}
		return 1
	}
	return 0
}

func runInspect(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintf(stderr, "keel-rootfs inspect: want exactly one ARTIFACT\n%s", usage)
		return 2
	}
	r, err := build.Inspect(args[0])
	if r != nil {
		printReport(stdout, r)
	}
	if err != nil {
		fmt.Fprintf(stderr, "keel-rootfs inspect: %v\n", err)
		return 1
	}
	return 0
}

func printReport(w io.Writer, r *build.Report) {
	fmt.Fprintf(w, "artifact:   %s\nformat:     %s\nsize:       %d\n", r.Path, r.Format, r.Size)
	if m := r.Manifest; m != nil {
		fmt.Fprintf(w, "recipe:     %s\nkind:       %s\nsha256:     %s\nepoch:      %d\n", m.Recipe, m.Kind, m.SHA256, m.SourceDateEpoch)
		if m.AgentVersion != "" {
			fmt.Fprintf(w, "agent:      %s\n", m.AgentVersion)
		}
		if m.FS != nil {
			fmt.Fprintf(w, "fs:         %s uuid=%s size=%d offset=%d\n", m.FS.Type, m.FS.UUID, m.FS.Size, m.FS.Offset)
		}
		if m.Compression != "" {
			fmt.Fprintf(w, "compress:   %s\n", m.Compression)
		}
		if len(m.Modules) > 0 {
			fmt.Fprintf(w, "modules:    %s (%s)\n", strings.Join(m.Modules, ","), m.KernelVersion)
		}
		for _, in := range m.Inputs {
			fmt.Fprintf(w, "input:      %s %s %s %s\n", in.Role, in.Path, in.SHA256, in.Note)
		}
	} else {
		fmt.Fprintf(w, "manifest:   none\n")
	}
	if b := r.PFN; b != nil {
		fmt.Fprintf(w, "pfn:        signature=%q version=%d.%d mode=%s\n", strings.TrimRight(string(b.Signature[:]), "\x00"), b.VersionMajor, b.VersionMinor, b.Mode)
		fmt.Fprintf(w, "pfn:        uuid=%s parent_uuid=%s flags=%#x\n", build.FormatUUID(b.UUID), build.FormatUUID(b.ParentUUID), b.Flags)
		fmt.Fprintf(w, "pfn:        dataoff=%#x npfns=%d align=%#x start_pad=%d end_trunc=%d\n", b.DataOff, b.NPFNs, b.Align, b.StartPad, b.EndTrunc)
		fmt.Fprintf(w, "pfn:        page_size=%d page_struct_size=%d checksum=%#016x\n", b.PageSize, b.PageStructSize, b.Checksum)
	}
}
