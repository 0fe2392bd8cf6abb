// Package image turns a root filesystem directory into a bootable disk
// image: ext4 (mkfs.ext4 -d) or erofs (mkfs.erofs, uncompressed and without
// inline data so DAX works), optionally behind an NVDIMM PFN info block
// (see rootfs-builder/pfn) so the file can back `-device nvdimm`.
//
// Images are reproducible: every timestamp in the tree is clamped to the
// build's epoch before mkfs runs (older ones are kept), and mkfs gets a fixed UUID, hash seed and
// fake clock (E2FSPROGS_FAKE_TIME). The result is written to a temporary
// name and renamed into place only when complete.
package image

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keelvm/keel/rootfs-builder/internal/atomicfile"
	"github.com/keelvm/keel/rootfs-builder/internal/confine"
	"github.com/keelvm/keel/rootfs-builder/pfn"
)

// FS is a filesystem type.
type FS string

// Supported filesystems.
const (
	Ext4  FS = "ext4"
	EROFS FS = "erofs"
)

// ParseFS maps a flag value to an FS.
func ParseFS(s string) (FS, error) {
	switch f := FS(s); f {
	case Ext4, EROFS:
		return f, nil
	}
	return "", fmt.Errorf("unknown filesystem %q (want ext4 or erofs)", s)
}

// Defaults for reproducible images. The UUIDs spell "keel" and are the
// same for every image unless Spec overrides them; a VM only ever sees
// one Keel rootfs, so a shared UUID is harmless and keeps builds stable.
const (
	DefaultUUID     = "6b65656c-0000-4000-8000-000000000001"
	DefaultHashSeed = "6b65656c-0000-4000-8000-000000000002"
	// SizeAlign: image sizes are multiples of 2 MiB (nvdimm namespaces
	// must end 2 MiB aligned; harmless for virtio-blk/pmem).
	SizeAlign = 2 << 20
	blockSize = 4096
	inodeSize = 256
)

// ErrTooSmall is returned when the content does not fit the requested size.
var ErrTooSmall = errors.New("image too small")

// Spec describes the image to build.
type Spec struct {
	FS FS
	// Size is the filesystem size in bytes (ext4; a maximum for erofs);
	// 0 sizes it automatically from the content with headroom.
	Size int64
	// DAX prepends the 2 MiB PFN info area for `-device nvdimm`.
	DAX bool
	// DAXMode is where the guest keeps struct pages for the device:
	// pfn.ModeRAM (default; costs guest RAM, 64 bytes per 4 KiB) or
	// pfn.ModePMEM (on the device; the fs then starts after them).
	DAXMode pfn.Mode
	// Epoch is the timestamp applied to every file and to mkfs.
	Epoch int64
	// UUID and HashSeed default to DefaultUUID and DefaultHashSeed.
	UUID, HashSeed string
	// Progress receives human progress lines; nil discards them.
	Progress func(format string, args ...any)
}

// Result describes a built image.
type Result struct {
	Size     int64 // file size
	FSSize   int64 // filesystem size
	FSOffset int64 // where the filesystem starts (2 MiB with DAX)
	UUID     string
	PFN      *pfn.InfoBlock
}

// Usage is what a tree needs, measured in filesystem terms.
type Usage struct {
	Bytes  int64 // data + directory + long symlink blocks, 4 KiB rounded
	Inodes int64
}

// Measure walks dir (through an os.Root, not following symlinks) and
// estimates the blocks and inodes it needs.
func Measure(dir string) (Usage, error) {
	var u Usage
	root, err := os.OpenRoot(dir)
	if err != nil {
		return u, err
	}
	defer root.Close()
	err = confine.Walk(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		u.Inodes++
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case info.Mode().IsRegular():
			u.Bytes += (info.Size() + blockSize - 1) / blockSize * blockSize
		case info.IsDir():
			u.Bytes += blockSize
		case info.Mode()&fs.ModeSymlink != 0 && info.Size() >= 60:
			u.Bytes += blockSize
		}
		return nil
	})
	return u, err
}

func alignUp(v, a int64) int64 { return (v + a - 1) / a * a }

// MinExt4Size is the smallest ext4 size that plausibly holds u: the data,
// the inode tables, and ~3% bitmaps/descriptors/extent blocks + 4 MiB.
func MinExt4Size(u Usage) int64 {
	inodes := u.Inodes + 64
	return alignUp(u.Bytes+u.Bytes/32+inodes*inodeSize+4<<20, blockSize)
}

// AutoExt4Size adds headroom (25% + 16 MiB) to the minimum and rounds to
// SizeAlign: room for the agent's runtime writes is not needed (the
// rootfs is mounted read-only) but mkfs's estimate must never be tight.
func AutoExt4Size(u Usage) int64 {
	m := MinExt4Size(u)
	return alignUp(m+m/4+16<<20, SizeAlign)
}

// ClampTimes clamps every mtime under dir to epoch (keeping older ones, as
// reproducible-builds tools clamp to SOURCE_DATE_EPOCH, so timestamp-checked
// caches such as Python's .pyc stay valid) and sets atimes to the mtimes.
// It works through an os.Root and never follows symlinks.
func ClampTimes(dir string, epoch int64) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	return confine.ClampTimes(root, epoch)
}

func (s Spec) progress(format string, args ...any) {
	if s.Progress != nil {
		s.Progress(format, args...)
	}
}

// Build makes the image out from dir. dir's timestamps are normalised in
// place. Nothing is left under out on failure.
func Build(ctx context.Context, dir, out string, spec Spec) (*Result, error) {
	if spec.UUID == "" {
		spec.UUID = DefaultUUID
	}
	if spec.HashSeed == "" {
		spec.HashSeed = DefaultHashSeed
	}
	if spec.Size < 0 || spec.Size%blockSize != 0 {
		return nil, fmt.Errorf("image size %d must be a positive multiple of %d", spec.Size, blockSize)
	}
	if err := checkOutputDir(out); err != nil {
		return nil, err
	}
	if err := ClampTimes(dir, spec.Epoch); err != nil {
		return nil, err
	}
	// The bare filesystem is built in a temp file next to out, so DAX
	// wrapping and the final rename stay on one filesystem.
	tmp, err := atomicfile.Create(out, 0o644)
	if err != nil {
		return nil, err
	}
	defer tmp.Abort()
	start := time.Now()
	var fsSize int64
	switch spec.FS {
	case Ext4:
		fsSize, err = mkfsExt4(ctx, dir, tmp.Name(), spec)
	case EROFS:
		fsSize, err = mkfsErofs(ctx, dir, tmp.Name(), spec)
	default:
		err = fmt.Errorf("unknown filesystem %q (want ext4 or erofs)", spec.FS)
	}
	if err != nil {
		return nil, err
	}
	spec.progress("%s filesystem: %d MiB in %v", spec.FS, fsSize>>20, time.Since(start).Round(time.Millisecond))
	res := &Result{FSSize: fsSize, UUID: spec.UUID}
	if !spec.DAX {
		total := alignUp(fsSize, SizeAlign)
		if err := tmp.Truncate(total); err != nil {
			return nil, err
		}
		res.Size = total
		return res, tmp.Commit()
	}
	// Wrap writes out via its own temp file; drop ours afterwards.
	u, err := uuidBytes(spec.UUID)
	if err != nil {
		return nil, err
	}
	blk, err := pfn.Wrap(tmp.Name(), out, pfn.Options{UUID: u, Mode: spec.DAXMode})
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(out)
	if err != nil {
		return nil, err
	}
	res.PFN, res.FSOffset, res.Size = blk, blk.FSOffset(), st.Size()
	return res, nil
}

// checkOutputDir reports an unusable output directory before any slow work.
func checkOutputDir(out string) error {
	dir := filepath.Dir(out)
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("output directory: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("output directory %s is not a directory", dir)
	}
	if err := unix.Access(dir, unix.W_OK); err != nil {
		return fmt.Errorf("output directory %s is not writable: %w", dir, err)
	}
	return nil
}

func uuidBytes(s string) ([16]byte, error) {
	var u [16]byte
	h := strings.ReplaceAll(s, "-", "")
	if len(h) != 32 {
		return u, fmt.Errorf("invalid UUID %q", s)
	}
	for i := range u {
		v, err := strconv.ParseUint(h[2*i:2*i+2], 16, 8)
		if err != nil {
			return u, fmt.Errorf("invalid UUID %q", s)
		}
		u[i] = byte(v)
	}
	return u, nil
}

func run(ctx context.Context, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return "", fmt.Errorf("%s not found: install e2fsprogs/erofs-utils", name)
		}
		return string(out), fmt.Errorf("%s failed: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func mkfsExt4(ctx context.Context, dir, file string, spec Spec) (int64, error) {
	if _, err := uuidBytes(spec.UUID); err != nil {
		return 0, err
	}
	u, err := Measure(dir)
	if err != nil {
		return 0, err
	}
	size := spec.Size
	if size == 0 {
		size = AutoExt4Size(u)
	} else if min := MinExt4Size(u); size < min {
		return 0, fmt.Errorf("%w: --size %d MiB, content needs at least %d MiB", ErrTooSmall, size>>20, (min+1<<20-1)>>20)
	}
	inodes := u.Inodes + u.Inodes/4 + 256
	args := []string{
		"-q", "-F", "-t", "ext4",
		"-b", strconv.Itoa(blockSize), "-I", strconv.Itoa(inodeSize),
		"-N", strconv.FormatInt(inodes, 10), "-m", "0",
		// No journal: the rootfs is mounted read-only, and a journal only
		// costs space. resize_inode is useless for a fixed image.
		"-O", "^has_journal,^resize_inode",
		"-U", spec.UUID,
		"-E", "hash_seed=" + spec.HashSeed + ",root_owner=0:0,lazy_itable_init=0,nodiscard",
		"-L", "keel-rootfs",
		"-d", dir, file, strconv.FormatInt(size/1024, 10) + "k",
	}
	// e2fsprogs treats a fake time of 0 as "unset" and uses the clock, so
	// epoch 0 becomes 1 for the superblock and inode change times.
	env := []string{"E2FSPROGS_FAKE_TIME=" + strconv.FormatInt(max(spec.Epoch, 1), 10), "MKE2FS_DEVICE_SECTSIZE=512", "MKE2FS_DEVICE_PHYS_SECTSIZE=4096"}
	out, err := run(ctx, env, "mkfs.ext4", args...)
	if err != nil {
		if strings.Contains(out, "Could not allocate") || strings.Contains(out, "No space left") || strings.Contains(out, "inodes") && strings.Contains(out, "allocate") {
			return 0, fmt.Errorf("%w: %d MiB is not enough for %s: %v", ErrTooSmall, size>>20, dir, err)
		}
		return 0, err
	}
	if err := normalizeExt4Times(ctx, file, spec.Epoch); err != nil {
		return 0, err
	}
	return size, nil
}

// normalizeExt4Times fixes the inode times mke2fs -d copies from the
// staging tree but which the tree cannot hold stable: ctime (the kernel
// sets it to "now" on every metadata change, including our utimes) and
// atime (reading the tree updates it). debugfs rewrites them for every
// inode in use; mtime was already clamped by ClampTimes.
func normalizeExt4Times(ctx context.Context, file string, epoch int64) error {
	hdr, err := run(ctx, nil, "dumpe2fs", "-h", file)
	if err != nil {
		return err
	}
	var count int64
	for _, line := range strings.Split(hdr, "\n") {
		if v, ok := strings.CutPrefix(line, "Inode count:"); ok {
			count, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	if count <= 0 {
		return fmt.Errorf("dumpe2fs %s: no inode count", file)
	}
	var probe strings.Builder
	for ino := int64(2); ino <= count; ino++ {
		fmt.Fprintf(&probe, "testi <%d>\n", ino)
	}
	out, err := debugfs(ctx, file, false, epoch, probe.String())
	if err != nil {
		return err
	}
	var fix strings.Builder
	t := "@" + strconv.FormatInt(epoch, 10)
	for _, line := range strings.Split(out, "\n") {
		var ino int64
		if n, _ := fmt.Sscanf(line, "Inode %d is marked in use", &ino); n == 1 {
			for _, f := range []string{"atime", "ctime", "crtime"} {
				fmt.Fprintf(&fix, "sif <%d> %s %s\nsif <%d> %s_extra 0\n", ino, f, t, ino, f)
			}
		}
	}
	_, err = debugfs(ctx, file, true, epoch, fix.String())
	return err
}

func debugfs(ctx context.Context, file string, write bool, epoch int64, script string) (string, error) {
	args := []string{"-f", "-"}
	if write {
		args = append([]string{"-w"}, args...)
	}
	cmd := exec.CommandContext(ctx, "debugfs", append(args, file)...)
	cmd.Stdin = strings.NewReader(script)
	// debugfs stamps the superblock's last write time on close.
	cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME="+strconv.FormatInt(max(epoch, 1), 10))
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("debugfs %s: %v: %s", file, err, strings.TrimSpace(stderr.String()))
	}
	// debugfs reports per-command failures on stderr but exits 0.
	if e := stderr.String(); strings.Contains(e, "Couldn't") || strings.Contains(e, "Invalid") {
		return "", fmt.Errorf("debugfs %s: %s", file, strings.TrimSpace(e))
	}
	return stdout.String() + stderr.String(), nil
}

func mkfsErofs(ctx context.Context, dir, file string, spec Spec) (int64, error) {
	args := []string{
		"--quiet",
		"-U" + spec.UUID,
		// Uncompressed, and no tail packing into inodes: DAX only maps
		// block-aligned, uncompressed file data.
		"-Enoinline_data",
		file, dir,
	}
	// SOURCE_DATE_EPOCH (erofs-utils 1.5+) fixes the superblock's build
	// time and clamps inode mtimes to it, keeping each file's own older
	// mtime; -T would stamp one time on every inode instead.
	env := []string{"SOURCE_DATE_EPOCH=" + strconv.FormatInt(spec.Epoch, 10)}
	if _, err := run(ctx, env, "mkfs.erofs", args...); err != nil {
		return 0, err
	}
	st, err := os.Stat(file)
	if err != nil {
		return 0, err
	}
	if spec.Size > 0 && st.Size() > spec.Size {
		return 0, fmt.Errorf("%w: erofs image is %d MiB, --size allows %d MiB", ErrTooSmall, (st.Size()+1<<20-1)>>20, spec.Size>>20)
	}
	return st.Size(), nil
}
