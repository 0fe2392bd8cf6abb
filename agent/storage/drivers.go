package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/keelvm/keel/agent/devmapper"
	"github.com/keelvm/keel/agent/pcipath"
	"github.com/keelvm/keel/agent/scsi"
	"github.com/keelvm/keel/agent/uevent"
	"golang.org/x/sys/unix"
)

// setUpFunc sets up one storage and returns how to tear it down.
type setUpFunc func(m *Manager, ctx context.Context, owner, field string, s Storage) (func() error, error)

var drivers = map[string]setUpFunc{
	DriverVirtioFS:      (*Manager).setUpShare,
	Driver9p:            (*Manager).setUpShare,
	DriverEphemeral:     (*Manager).setUpEphemeral,
	DriverLocal:         (*Manager).setUpLocal,
	DriverBlk:           (*Manager).setUpDisk,
	DriverMmioBlk:       (*Manager).setUpDisk,
	DriverSCSI:          (*Manager).setUpDisk,
	DriverNvdimm:        (*Manager).setUpDisk,
	DriverOverlayfs:     (*Manager).setUpOverlay,
	DriverWatchableBind: (*Manager).setUpWatchable,
	// Set up for a group of storages (see multilayer.go).
	DriverMultiLayerErofs: (*Manager).setUpMultiLayer,
}

// kataOnly are Kata drivers Keel knows and does not serve.
var kataOnly = map[string]string{
	"blk-ccw":          "virtio-blk on CCW exists only on s390x",
	"image_guest_pull": "pulling images in the guest is not supported",
}

func driverNames() string {
	names := make([]string, 0, len(drivers))
	for n := range drivers {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func (m *Manager) setUp(ctx context.Context, owner, field string, s Storage) (func() error, error) {
	return drivers[s.Driver](m, ctx, owner, field, s)
}

// mount mounts source on s.MountPoint (created safely under its root),
// then applies fs_group; the returned func unmounts and removes what was
// created.
func (m *Manager) mount(field string, s Storage, source, fstype string, opts []string, dir bool) (func() error, error) {
	return m.mountRetry(field, s, source, fstype, opts, dir, nil)
}

// mountRetry is mount, asking retry (if set) about each failed mount(2):
// it returns nil to try again, or the error to give up with.
func (m *Manager) mountRetry(field string, s Storage, source, fstype string, opts []string, dir bool, retry func(error) error) (func() error, error) {
	root, err := checkMountPoint(field+".mount_point", s.MountPoint, m.cfg.Roots)
	if err != nil {
		return nil, err
	}
	flags, data, err := parseOptions(field+".options", opts)
	if err != nil {
		return nil, err
	}
	t, f, err := makeTarget(root, s.MountPoint, dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	for {
		err := mountAt(f, source, fstype, flags, data)
		if err == nil {
			break
		}
		if retry != nil {
			err = retry(err)
		}
		if err != nil || retry == nil {
			t.removeCreated()
			return nil, fmt.Errorf("unable to mount %s (%s, options %q) on %s: %w", source, fstype, data, s.MountPoint, err)
		}
	}
	undo := func() error {
		err := unmount(s.MountPoint)
		t.removeCreated()
		return err
	}
	if flags&unix.MS_BIND != 0 && flags&unix.MS_RDONLY != 0 {
		// A bind mount ignores MS_RDONLY until remounted.
		if err := unix.Mount("", s.MountPoint, "", flags|unix.MS_REMOUNT, ""); err != nil {
			undo()
			return nil, fmt.Errorf("unable to make %s read-only: %w", s.MountPoint, err)
		}
	}
	if s.FSGroup != nil {
		if err := setOwnership(s.MountPoint, *s.FSGroup, flags&unix.MS_RDONLY != 0); err != nil {
			undo()
			return nil, err
		}
	}
	return undo, nil
}

// setUpShare mounts a virtio-fs or 9p tag. A virtio-fs tag may belong
// to a device hot-added just before the request: its mount is retried
// until the tag is known (tagWaiter).
func (m *Manager) setUpShare(ctx context.Context, _, field string, s Storage) (func() error, error) {
	if s.Source == "" {
		return nil, invalidf("%s.source: empty (want the %s tag, e.g. %s)", field, s.Driver, SharedTag)
	}
	fstype, opts := s.Fstype, s.Options
	if s.Driver == DriverVirtioFS {
		if fstype == "" {
			fstype = "virtiofs"
		}
		if fstype != "virtiofs" {
			return nil, invalidf("%s.fstype %q: a virtio-fs storage is virtiofs", field, trunc(fstype))
		}
		// Kata's guest may have premounted the share (initrd): keep it.
		if s.Source == SharedTag && isMountPoint(s.MountPoint) {
			return nil, nil
		}
		start := time.Now()
		undo, err := m.mountRetry(field, s, s.Source, fstype, opts, true, m.tagWaiter(ctx, s.Source))
		if err == nil {
			m.cfg.Log.Info("virtio-fs mounted", "tag", s.Source, "mount_point", s.MountPoint, "waited_ms", time.Since(start).Milliseconds())
		}
		return undo, err
	} else {
		if fstype == "" {
			fstype = "9p"
		}
		if fstype != "9p" {
			return nil, invalidf("%s.fstype %q: a 9p storage is 9p", field, trunc(fstype))
		}
		if _, ok := optionValue(opts, "trans"); !ok {
			opts = append(append([]string{}, opts...), "trans=virtio")
		}
	}
	return m.mount(field, s, s.Source, fstype, opts, true)
}

// setUpEphemeral mounts a tmpfs or a hugetlbfs.
func (m *Manager) setUpEphemeral(_ context.Context, _, field string, s Storage) (func() error, error) {
	fstype := s.Fstype
	if fstype == "" {
		fstype = "tmpfs"
	}
	source := s.Source
	if source == "" {
		source = fstype
	}
	opts := s.Options
	switch fstype {
	case "tmpfs":
		var gid *uint32
		if v, ok := optionValue(opts, "fsgid"); ok {
			g, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return nil, invalidf("%s.options fsgid=%q: want a group id", field, trunc(v))
			}
			g32 := uint32(g)
			gid = &g32
			opts = withoutOption(opts, "fsgid")
		}
		undo, err := m.mount(field, s, source, fstype, opts, true)
		if err != nil || gid == nil {
			return undo, err
		}
		if err := chownSetgid(s.MountPoint, *gid); err != nil {
			undo()
			return nil, err
		}
		return undo, nil
	case "hugetlbfs":
		unreserve, err := m.reserveHugepages(field, opts)
		if err != nil {
			return nil, err
		}
		undo, err := m.mount(field, s, source, fstype, opts, true)
		if err != nil {
			if uerr := unreserve(); uerr != nil {
				m.cfg.Log.Warn("huge page reservation not restored", "err", uerr)
			}
			return nil, err
		}
		return func() error { return errors.Join(undo(), unreserve()) }, nil
	}
	return nil, invalidf("%s.fstype %q: an ephemeral storage is tmpfs or hugetlbfs", field, trunc(fstype))
}

// reserveHugepages makes sure size bytes of pagesize pages are reserved
// (Kata: options pagesize=<bytes>, size=<bytes>) and returns how to give
// them back: nr_hugepages goes back down to what the storages still set
// up ask, never below what the agent found, and only while it still holds
// the value the agent wrote.
func (m *Manager) reserveHugepages(field string, opts []string) (func() error, error) {
	ps, ok1 := optionValue(opts, "pagesize")
	sz, ok2 := optionValue(opts, "size")
	if !ok1 || !ok2 {
		return nil, invalidf("%s.options: hugetlbfs needs pagesize= and size= (bytes)", field)
	}
	pagesize, err1 := strconv.ParseUint(ps, 10, 64)
	size, err2 := strconv.ParseUint(sz, 10, 64)
	if err1 != nil || err2 != nil || pagesize < 4096 || size%pagesize != 0 {
		return nil, invalidf("%s.options pagesize=%q size=%q: want byte counts, size a multiple of pagesize", field, trunc(ps), trunc(sz))
	}
	nr := filepath.Join(m.cfg.Sysfs, "kernel/mm/hugepages", fmt.Sprintf("hugepages-%dkB", pagesize/1024), "nr_hugepages")
	want := size / pagesize
	m.hugeMu.Lock()
	defer m.hugeMu.Unlock()
	if m.huge == nil {
		m.huge = map[string]*hugeRes{}
	}
	r := m.huge[nr]
	if r == nil {
		cur, err := readUint(nr)
		if err != nil {
			return nil, invalidf("%s.options pagesize=%s: the kernel has no such huge page size (%v)", field, ps, err)
		}
		r = &hugeRes{base: cur}
		m.huge[nr] = r
	}
	r.wants = append(r.wants, want)
	released := false
	// releaseLocked drops this storage's want; hugeMu is held.
	releaseLocked := func() error {
		if released {
			return nil
		}
		released = true
		i := slices.Index(r.wants, want)
		r.wants = slices.Delete(r.wants, i, i+1)
		if len(r.wants) == 0 {
			delete(m.huge, nr)
		}
		return r.lower(nr)
	}
	release := func() error {
		m.hugeMu.Lock()
		defer m.hugeMu.Unlock()
		return releaseLocked()
	}
	// On failure the want is dropped here (the lock is held: releaseLocked,
	// not release) and no release is returned, so nothing stays wanted.
	fail := func(err error) (func() error, error) {
		if rerr := releaseLocked(); rerr != nil {
			m.cfg.Log.Warn("huge page reservation not restored", "err", rerr)
		}
		return nil, err
	}
	target := r.target()
	cur, err := readUint(nr)
	if err != nil {
		return fail(fmt.Errorf("unable to read %s: %w", nr, err))
	}
	if cur >= target {
		return release, nil
	}
	if err := writeHugepages(nr, target); err != nil {
		return fail(fmt.Errorf("unable to reserve %d huge pages: %w", target, err))
	}
	r.set = target
	got, err := readUint(nr)
	if err != nil {
		return fail(fmt.Errorf("unable to read back %s: %w", nr, err))
	}
	// What the kernel gave is the agent's value now: set to what was read
	// back, so that giving back recognises it (a short count is ours).
	r.set = got
	if got < target {
		return fail(fmt.Errorf("unable to reserve %d huge pages of %d bytes: only %d", target, pagesize, got))
	}
	return release, nil
}

// hugeRes is the agent's reservation of one huge page size.
type hugeRes struct {
	base  uint64   // nr_hugepages as the agent found it
	set   uint64   // what the agent last wrote (0: nothing)
	wants []uint64 // pages each hugetlbfs storage set up asks
}

func (r *hugeRes) target() uint64 {
	t := r.base
	for _, w := range r.wants {
		t = max(t, w)
	}
	return t
}

// lower writes the target back to nr when the agent's own value is still
// there and is above it.
func (r *hugeRes) lower(nr string) error {
	t := r.target()
	if r.set == 0 || r.set <= t {
		return nil
	}
	if cur, err := readUint(nr); err != nil || cur != r.set {
		return err // changed by someone else since: theirs now
	}
	if err := writeHugepages(nr, t); err != nil {
		return fmt.Errorf("unable to give back huge pages (%s to %d): %w", nr, t, err)
	}
	r.set = t
	return nil
}

// writeHugepages writes n to the nr_hugepages file nr; a variable so that
// tests can play a kernel that allocates fewer pages than asked.
var writeHugepages = func(nr string, n uint64) error {
	return os.WriteFile(nr, []byte(strconv.FormatUint(n, 10)), 0)
}

func readUint(p string) (uint64, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

// setUpLocal creates a directory (options mode=<octal>, fsgid=<gid>).
func (m *Manager) setUpLocal(_ context.Context, _, field string, s Storage) (func() error, error) {
	root, err := checkMountPoint(field+".mount_point", s.MountPoint, m.cfg.Roots)
	if err != nil {
		return nil, err
	}
	var mode os.FileMode
	hasMode := false
	if v, ok := optionValue(s.Options, "mode"); ok {
		n, err := strconv.ParseUint(v, 8, 32)
		if err != nil || n > 0o7777 {
			return nil, invalidf("%s.options mode=%q: want an octal mode", field, trunc(v))
		}
		mode, hasMode = os.FileMode(n), true
	}
	var gid *uint32
	if v, ok := optionValue(s.Options, "fsgid"); ok {
		g, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return nil, invalidf("%s.options fsgid=%q: want a group id", field, trunc(v))
		}
		g32 := uint32(g)
		gid = &g32
	}
	t, f, err := makeTarget(root, s.MountPoint, true)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	undo := func() error { t.removeCreated(); return nil }
	// Through the opened directory: no path lookup after the checks.
	p := fmt.Sprintf("/proc/self/fd/%d", f.Fd())
	if gid != nil {
		if err := os.Chown(p, -1, int(*gid)); err != nil {
			undo()
			return nil, fmt.Errorf("unable to chown %s: %w", s.MountPoint, err)
		}
	}
	if hasMode || gid != nil {
		if !hasMode {
			st, err := os.Stat(p)
			if err != nil {
				undo()
				return nil, err
			}
			mode = st.Mode().Perm()
		}
		perm := uint32(mode)
		if gid != nil {
			perm |= unix.S_ISGID
		}
		if err := unix.Fchmodat(unix.AT_FDCWD, p, perm, 0); err != nil {
			undo()
			return nil, fmt.Errorf("unable to chmod %s: %w", s.MountPoint, err)
		}
	}
	return undo, nil
}

// setUpDisk finds the disk of a blk, mmioblk, scsi or nvdimm storage and
// mounts it.
func (m *Manager) setUpDisk(ctx context.Context, _, field string, s Storage) (func() error, error) {
	if s.Fstype == "" {
		return nil, invalidf("%s.fstype: empty (the disk's filesystem)", field)
	}
	mkfs, encrypt, err := m.checkDiskDriverOptions(field, s)
	if err != nil {
		return nil, err
	}
	dev, err := m.findDisk(ctx, field, s)
	if err != nil {
		return nil, err
	}
	uncrypt := func() error { return nil }
	if encrypt {
		if dev, uncrypt, err = m.encrypt(ctx, field, s.MountPoint, dev); err != nil {
			return nil, err
		}
	}
	if mkfs != "" {
		if err := makeExt4(ctx, mkfs, dev); err != nil {
			uncrypt()
			return nil, fmt.Errorf("%s.driver_options %q: %w", field, optCreateFS, err)
		}
	}
	opts := s.Options
	if s.Driver == DriverNvdimm && !hasOption(opts, "dax") && !hasOption(opts, "dax=always") && supportsDax(m.cfg.Sysfs, filepath.Base(dev), s.Fstype) {
		opts = append(append([]string{}, opts...), "dax")
	}
	undo, err := m.mount(field, s, dev, s.Fstype, opts, true)
	if err != nil {
		uncrypt()
		return nil, err
	}
	return func() error { return errors.Join(undo(), uncrypt()) }, nil
}

// Kata's block driver options (kata-types mount.rs, block_handler.rs).
const (
	// optCreateFS asks for a fresh ext4 on the disk before the mount
	// (block emptyDir volumes).
	optCreateFS = "create_filesystem"
	// optEphemeralKey asks for the disk to be encrypted with a random key
	// that never leaves the guest (needs optCreateFS).
	optEphemeralKey = "encryption_key=ephemeral"
)

// checkDiskDriverOptions applies Kata's rules to the driver options and
// refuses, naming the option, what this guest cannot do: the ephemeral
// key needs device-mapper with dm-crypt in the kernel, create_filesystem
// needs mkfs.ext4 in the guest image. It returns the mkfs.ext4 to run
// (create_filesystem) or "", and whether to encrypt. Other driver options
// are ignored, as Kata does.
func (m *Manager) checkDiskDriverOptions(field string, s Storage) (mkfs string, encrypt bool, err error) {
	create, encrypt := hasOption(s.DriverOptions, optCreateFS), hasOption(s.DriverOptions, optEphemeralKey)
	switch {
	case encrypt && !create:
		return "", false, invalidf("%s.driver_options %q needs %q (the encrypted disk gets a fresh filesystem)", field, optEphemeralKey, optCreateFS)
	case create && s.Fstype != "ext4":
		return "", false, invalidf("%s.fstype %q: %s makes ext4 only", field, trunc(s.Fstype), optCreateFS)
	}
	if encrypt {
		if why := devmapper.Available(); why != "" {
			return "", false, fmt.Errorf("%w: %s.driver_options %q: dm-crypt needs device-mapper: %s", ErrUnsupported, field, optEphemeralKey, why)
		}
	}
	if create {
		if mkfs, err = m.tool("mkfs.ext4"); err != nil {
			return "", false, fmt.Errorf("%w: %s.driver_options %q: %v", ErrUnsupported, field, optCreateFS, err)
		}
	}
	return mkfs, encrypt, nil
}

// findDisk returns the /dev path of the storage's disk, waiting for it.
func (m *Manager) findDisk(ctx context.Context, field string, s Storage) (string, error) {
	devName := func() (string, error) {
		name, ok := strings.CutPrefix(s.Source, "/dev/")
		if !ok || name == "" || strings.Contains(name, "/") {
			return "", invalidf("%s.source %q: want /dev/<disk>", field, trunc(s.Source))
		}
		return name, nil
	}
	var mt uevent.Matcher
	switch s.Driver {
	case DriverBlk:
		if strings.HasPrefix(s.Source, "/dev/") {
			name, err := devSource(s.Source)
			if err != nil {
				return "", invalidf("%s.source %q: %v", field, trunc(s.Source), err)
			}
			mt = uevent.BlockNode("/dev", name)
			break
		}
		p, err := pcipath.Parse(s.Source)
		if err != nil {
			return "", invalidf("%s.source: %v (want a PCI path like 02/00 or a /dev path)", field, err)
		}
		mt = p.Block()
	case DriverMmioBlk, DriverNvdimm:
		name, err := devName()
		if err != nil {
			return "", err
		}
		mt = uevent.ByName("block", name)
	case DriverSCSI:
		a, err := scsi.ParseAddr(s.Source)
		if err != nil {
			return "", invalidf("%s.source %q: %v", field, trunc(s.Source), err)
		}
		mt = scsi.Disk(a)
	}
	start := time.Now()
	ev, err := m.cfg.Devices.Wait(ctx, mt, 0)
	if err != nil {
		if s.Driver == DriverBlk && errors.Is(err, context.DeadlineExceeded) && isBlockDevice(s.Source) == nil {
			err = fmt.Errorf("%w (the node is there, its disk is not ready: not in sysfs, or opening it answers ENXIO)", err)
		}
		return "", fmt.Errorf("%s.source %q: %w", field, trunc(s.Source), err)
	}
	m.cfg.Log.Info("disk found", "driver", s.Driver, "storage_source", s.Source, "devname", ev.DevName, "waited_ms", time.Since(start).Milliseconds())
	if ev.DevName == "" {
		return "", fmt.Errorf("%s.source %q: %s has no device node", field, s.Source, ev.DevPath)
	}
	return "/dev/" + ev.DevName, nil
}

// devSource checks a "blk" storage's /dev source and returns its name
// under /dev. A node that is missing may be a disk not added yet (it is
// waited for); one that is there must be a block device. Kata's agent
// takes the node as it is; Keel waits for its disk to be ready, as for a
// PCI path: a hot-plugged disk's node answers ENXIO until the kernel has
// finished adding it.
func devSource(source string) (string, error) {
	name, _ := strings.CutPrefix(source, "/dev/")
	if name == "" || path.Clean(source) != source || strings.ContainsRune(source, 0) {
		return "", errors.New("want a clean path under /dev")
	}
	err := isBlockDevice(source)
	if errors.Is(err, unix.ENOENT) {
		return name, nil
	}
	return name, err
}

func isBlockDevice(p string) error {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return errors.New("not a block device")
	}
	return nil
}

// supportsDax: the pmem disk advertises DAX and the filesystem can use it.
func supportsDax(sysfs, disk, fstype string) bool {
	if fstype != "ext4" && fstype != "xfs" && fstype != "erofs" {
		return false
	}
	b, err := os.ReadFile(filepath.Join(sysfs, "block", disk, "queue/dax"))
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// setUpOverlay mounts an overlay. The directories it creates (the rw
// upper/work dirs, create_directory's) are made like a mount point: only
// what is missing below the storage root, no symlink followed on the way;
// they are removed again on failure and teardown.
func (m *Manager) setUpOverlay(_ context.Context, owner, field string, s Storage) (func() error, error) {
	opts := append([]string{}, s.Options...)
	var created []string // rw upper/work dirs this storage made, removed with their content
	var targets []*target
	cleanup := func() {
		for i := len(created) - 1; i >= 0; i-- {
			os.RemoveAll(created[i])
		}
		for i := len(targets) - 1; i >= 0; i-- {
			targets[i].removeCreated()
		}
	}
	mkdir := func(f, root, p string) error {
		t, fd, err := makeTarget(root, p, true)
		if err != nil {
			if errors.Is(err, ErrInvalid) {
				// Named by the field that asked for it.
				return invalidf("%s: %s", f, strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": "))
			}
			return err
		}
		fd.Close()
		targets = append(targets, t)
		return nil
	}
	const rwOpt = "io.katacontainers.fs-opt.overlay-rw"
	if hasOption(opts, rwOpt) {
		if owner == "" {
			return nil, invalidf("%s.options %s: only for a container's storage", field, rwOpt)
		}
		base := filepath.Join(m.cfg.ContainerBase, owner)
		root, err := checkMountPoint(field+".options", base, m.cfg.Roots)
		if err != nil {
			return nil, err
		}
		var dirs []string
		for _, d := range []string{"upper", "work"} {
			p := filepath.Join(base, "overlay-"+d)
			if err := mkdir(field+".options", root, p); err != nil {
				cleanup()
				return nil, err
			}
			dirs = append(dirs, p)
			// Only what this storage created goes with it: an upper
			// dir that was there keeps its content.
			if t := targets[len(targets)-1]; slices.Contains(t.created, p) {
				created = append(created, p)
			}
		}
		kept := opts[:0]
		for _, o := range opts {
			if o != rwOpt {
				kept = append(kept, o)
			}
		}
		opts = append(kept, "upperdir="+dirs[0], "workdir="+dirs[1])
	}
	const mkdirOpt = "io.katacontainers.volume.overlayfs.create_directory="
	for i, o := range s.DriverOptions {
		if d, ok := strings.CutPrefix(o, mkdirOpt); ok {
			f := fmt.Sprintf("%s.driver_options[%d]", field, i)
			root, err := checkMountPoint(f, d, m.cfg.Roots)
			if err == nil {
				err = mkdir(f, root, d)
			}
			if err != nil {
				cleanup()
				return nil, err
			}
		}
	}
	source := s.Source
	if source == "" {
		source = "overlay"
	}
	undo, err := m.mount(field, s, source, "overlay", opts, true)
	if err != nil {
		cleanup()
		return nil, err
	}
	return func() error { err := undo(); cleanup(); return err }, nil
}

// Ownership masks (Kubernetes' volume ownership rules, as Kata applies them).
const (
	rwMask   = 0o660
	roMask   = 0o440
	execMask = 0o110
)

// setOwnership gives the volume at root to group fg.GID, recursively,
// making files group-readable (and writable unless ro), directories
// group-searchable and setgid. Symlinks are left alone. The tree (which
// the host or a container may be changing) is walked through directory
// fds, every entry opened O_PATH|O_NOFOLLOW relative to its directory and
// changed through that handle: an entry swapped for a symlink is never
// followed, so nothing outside the volume changes owner or mode.
func setOwnership(root string, fg FSGroup, ro bool) error {
	mask := uint32(rwMask)
	if ro {
		mask = roMask
	}
	fd, err := openNoSymlinks(root, unix.O_PATH)
	if err != nil {
		return fmt.Errorf("unable to open %s: %w", root, err)
	}
	defer unix.Close(fd)
	if fg.OnRootMismatch {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err == nil && st.Gid == fg.GID {
			want := mask | execMask
			if st.Mode&want == want && st.Mode&unix.S_ISGID != 0 {
				return nil
			}
		}
	}
	return ownEntry(fd, root, fg.GID, mask, 0)
}

// ownEntry applies fs_group to the entry open as the O_PATH fd (named p in
// errors) and, for a directory, to what is in it.
func ownEntry(fd int, p string, gid, mask uint32, depth int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	typ := st.Mode & unix.S_IFMT
	if typ == unix.S_IFLNK {
		return nil
	}
	if err := unix.Fchownat(fd, "", -1, int(gid), unix.AT_EMPTY_PATH); err != nil {
		return fmt.Errorf("unable to set fs_group on %s: %w", p, err)
	}
	add := mask
	if typ == unix.S_IFDIR {
		add |= execMask | unix.S_ISGID
	}
	// chmod through the handle's /proc link: it names the opened inode
	// (fchmod does not take an O_PATH fd).
	if err := unix.Fchmodat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), (st.Mode&0o7777)|add, 0); err != nil {
		return fmt.Errorf("unable to set fs_group on %s: %w", p, err)
	}
	if typ != unix.S_IFDIR {
		return nil
	}
	if depth >= 256 {
		return fmt.Errorf("unable to set fs_group below %s: nested too deep", p)
	}
	dir, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("unable to open %s: %w", p, err)
	}
	defer unix.Close(dir)
	names, err := readDirNames(dir)
	if err != nil {
		return fmt.Errorf("unable to list %s: %w", p, err)
	}
	for _, name := range names {
		child, err := unix.Openat(dir, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) {
			continue // gone since the listing
		}
		if err != nil {
			return fmt.Errorf("unable to open %s: %w", filepath.Join(p, name), err)
		}
		err = ownEntry(child, filepath.Join(p, name), gid, mask, depth+1)
		unix.Close(child)
		if err != nil {
			return err
		}
	}
	return nil
}

func chownSetgid(p string, gid uint32) error {
	if err := os.Chown(p, -1, int(gid)); err != nil {
		return fmt.Errorf("unable to chown %s: %w", p, err)
	}
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	return os.Chmod(p, st.Mode()|os.ModeSetgid)
}

// sortDeepestFirst orders mount points so nested ones come first.
func sortDeepestFirst(mps []string) {
	sort.Slice(mps, func(i, j int) bool {
		ci, cj := strings.Count(mps[i], "/"), strings.Count(mps[j], "/")
		if ci != cj {
			return ci > cj
		}
		return mps[i] > mps[j]
	})
}
