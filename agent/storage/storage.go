// Package storage mounts the storages Kata's runtime sends with
// CreateSandbox (the sandbox's: the shared directory, the shm) and
// CreateContainer (the container's: its rootfs when it is a block device,
// its volumes), with Kata's driver names, paths and semantics:
//
//	virtio-fs       mount the virtio-fs tag in source (kataShared) with fstype virtiofs
//	9p              mount the 9p tag in source (trans=virtio added when missing)
//	ephemeral       tmpfs (the sandbox shm, emptyDir medium Memory) or
//	                hugetlbfs (pagesize=/size= in bytes: the pages are reserved first)
//	local           a directory (options mode=0777, fsgid=N), no mount
//	blk             virtio-blk by Kata PCI path in source ("02/00"), or a /dev path
//	mmioblk         virtio-blk on MMIO, source /dev/vdX
//	scsi            virtio-scsi disk, source "target:lun" (hosts rescanned)
//	nvdimm          /dev/pmemN, mounted with dax when the device supports it
//	overlayfs       overlay (option io.katacontainers.fs-opt.overlay-rw gives
//	                the container an upper and work dir)
//	watchable-bind  source mirrored into a tmpfs and polled, so a ConfigMap
//	                update reaches the container (Kata's limits: 16 files,
//	                1 MiB; beyond them a plain bind mount)
//	erofs.multi-layer  not one storage but a group: the blk/scsi storages
//	                marked X-kata.multi-layer=true (EROFS lowers, GPT
//	                partitions possibly under dm-verity, an ext4 upper)
//	                become one overlay rootfs (multilayer.go, verity.go)
//
// A disk's driver options: create_filesystem makes an ext4 with the guest
// image's mkfs.ext4 (mkfs.go); encryption_key=ephemeral puts dm-crypt with
// a key made in the guest under it (crypt.go).
//
// A virtio-fs tag may belong to a device hot-added just before the
// request: its mount is retried until the tag is known or the hotplug
// timeout passes.
//
// A storage is identified by its mount point and reference-counted: the
// second container naming the same mount point reuses the mount, the last
// one to go unmounts it. Sandbox storages, "shared" storages and the
// ephemeral and local drivers' (emptyDir: the pod's lifetime) stay until
// Close. Options go to mount(2) as flags and a data string built from
// single options (a comma inside an option is refused); mount points
// must be under the configured roots and are created without following
// symlinks. A failing Add undoes everything it did.
package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/keelvm/keel/agent/errdefs"
	"github.com/keelvm/keel/agent/uevent"
)

// Kata's paths.
const (
	// KataRoot holds every Kata storage mount point.
	KataRoot = "/run/kata-containers"
	// SharedDir is where the sandbox share (virtio-fs/9p tag kataShared) is mounted.
	SharedDir = KataRoot + "/shared/containers"
	// SandboxShm is the sandbox's ephemeral shm.
	SandboxShm = KataRoot + "/sandbox/shm"
	// SharedTag is the virtio-fs/9p tag of the sandbox share.
	SharedTag = "kataShared"
)

// Drivers (Storage.driver).
const (
	DriverVirtioFS      = "virtio-fs"
	Driver9p            = "9p"
	DriverEphemeral     = "ephemeral"
	DriverLocal         = "local"
	DriverBlk           = "blk"
	DriverMmioBlk       = "mmioblk"
	DriverSCSI          = "scsi"
	DriverNvdimm        = "nvdimm"
	DriverOverlayfs     = "overlayfs"
	DriverWatchableBind = "watchable-bind"
)

// Error classes.
var (
	// ErrInvalid: the request is wrong (field named in the message).
	ErrInvalid = errdefs.New(errdefs.ErrInvalidArgument, "invalid storage")
	// ErrUnsupported: a Kata feature Keel does not implement.
	ErrUnsupported = errdefs.New(errdefs.ErrUnimplemented, "unsupported storage")
)

// FSGroup asks for the volume to be owned by a group (Kubernetes fsGroup).
type FSGroup struct {
	GID uint32
	// OnRootMismatch skips the recursive chown when the volume root
	// already has the group and the permissions (policy OnRootMismatch);
	// otherwise it always runs (Always).
	OnRootMismatch bool
}

// Storage is one storage to set up (Kata's Storage message).
type Storage struct {
	Driver        string
	DriverOptions []string
	Source        string
	Fstype        string
	Options       []string
	MountPoint    string
	FSGroup       *FSGroup
	Shared        bool

	// layers are the storages of a multi-layer EROFS group (driver
	// DriverMultiLayerErofs), which Add sets up as this one storage.
	layers []layer
}

// Config configures a Manager.
type Config struct {
	// Devices finds hot-plugged disks (blk, mmioblk, scsi, nvdimm); nil
	// gets a registry without a listener, which polls sysfs.
	Devices *uevent.Registry
	// Roots are the directories mount points must be under; default
	// [KataRoot].
	Roots []string
	// ContainerBase holds per-container overlay upper/work dirs; default
	// KataRoot.
	ContainerBase string
	// Sysfs is where sysfs is mounted (scsi scans, dax checks, hugepages);
	// default /sys.
	Sysfs string
	// ToolDirs are where guest tools (mkfs.ext4 for create_filesystem)
	// are looked for; nil: /usr/sbin, /sbin, /usr/bin, /bin, then PATH.
	ToolDirs []string
	// WatchInterval is the watchable-bind polling period; default 2 s.
	WatchInterval time.Duration
	Log           *slog.Logger
}

// Manager sets up and tears down storages. Safe for concurrent use; no
// lock is held while waiting for a device or mounting.
type Manager struct {
	cfg Config

	mu      sync.Mutex
	entries map[string]*entry // by mount point
	owners  map[string][]ref  // owner ("" = sandbox) -> references it holds, in order
	watch   *watcher

	hugeMu sync.Mutex          // held while nr_hugepages is read and written
	huge   map[string]*hugeRes // by nr_hugepages file
}

// mountedAs reports whether mp is a storage this manager set up, with
// driver.
func (m *Manager) mountedAs(mp, driver string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.entries[mp]
	return ok && e.driver == driver
}

// entry is one set-up storage.
type entry struct {
	ready  chan struct{} // closed when setup ended
	err    error         // setup's result, valid after ready
	refs   int
	keep   bool // sandbox, shared, ephemeral, local: only Close removes it
	driver string
	// undo tears the storage down (unmount, remove what was created).
	undo func() error
	// closing is set when the last user left and undo runs; closed when
	// it is done. A new user of the mount point waits for it: a fresh
	// mount must not race the unmount of the old one.
	closing chan struct{}
}

// New returns a Manager.
func New(cfg Config) *Manager {
	if len(cfg.Roots) == 0 {
		cfg.Roots = []string{KataRoot}
	}
	if cfg.ContainerBase == "" {
		cfg.ContainerBase = KataRoot
	}
	if cfg.Sysfs == "" {
		cfg.Sysfs = uevent.DefaultSysfs
	}
	if cfg.Devices == nil {
		// No listener: devices are found by looking in sysfs (every 500 ms).
		cfg.Devices = uevent.NewRegistry(cfg.Sysfs, 0)
	}
	if cfg.WatchInterval <= 0 {
		cfg.WatchInterval = 2 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	m := &Manager{cfg: cfg, entries: map[string]*entry{}, owners: map[string][]ref{}}
	m.watch = newWatcher(m)
	return m
}

// Add sets up storages for owner: a container id, or "" for the sandbox.
// It returns when every storage is mounted; on error, those this call set
// up are torn down again (references it took are dropped) and the error
// names the storage by its index in field ("storages[2].source: ...").
func (m *Manager) Add(ctx context.Context, owner, field string, ss []Storage) error {
	refs, err := m.Acquire(ctx, owner, field, ss)
	if err != nil {
		return err
	}
	m.Keep(owner, refs)
	return nil
}

// Refs are the references one Acquire took.
type Refs struct{ refs []ref }

// ref is one reference: the entry it was taken on, not just its mount
// point, so that dropping it after Close (DestroySandbox does not wait for
// a create's rollback) cannot drop a reference on a later storage at the
// same mount point, which it never took.
type ref struct {
	mp string
	e  *entry
}

// Acquire is Add whose references stay with the caller instead of being
// recorded under owner (owner still names the container for the drivers'
// paths): they are given back by Drop or handed to owner by Keep. A
// create in progress holds its storages this way, so that neither a
// concurrent create of the same id nor a Release(owner) drops them while
// the create, or its rollback, still runs inside them.
func (m *Manager) Acquire(ctx context.Context, owner, field string, ss []Storage) (_ *Refs, err error) {
	var taken []ref
	created := map[*entry]bool{}
	defer func() {
		if err != nil {
			// Undo in reverse, including what this call set up for the
			// sandbox's lifetime (ephemeral, local, shared).
			for i := len(taken) - 1; i >= 0; i-- {
				if e := m.releaseOne(taken[i], created[taken[i].e]); e != nil {
					m.cfg.Log.Warn("storage rollback", "mount_point", taken[i].mp, "err", e)
				}
			}
		}
	}()
	group, first, hasGroup := groupMultiLayer(ss)
	for i, s := range ss {
		f := fmt.Sprintf("%s[%d]", field, i)
		if hasGroup && isMultiLayer(s) {
			// The whole group in place of its first storage; its
			// errors name each storage by its own index.
			if i != first {
				continue
			}
			s, f = group, field
		}
		if err := m.validate(f, &s); err != nil {
			return nil, err
		}
		r, isNew, err := m.addOne(ctx, owner, f, s)
		if err != nil {
			return nil, err
		}
		taken = append(taken, r)
		created[r.e] = created[r.e] || isNew
	}
	return &Refs{refs: taken}, nil
}

// Keep hands refs to owner: its Release drops them. A nil refs is none.
func (m *Manager) Keep(owner string, refs *Refs) {
	if refs == nil {
		return
	}
	m.mu.Lock()
	m.owners[owner] = append(m.owners[owner], refs.refs...)
	m.mu.Unlock()
}

// Drop gives refs back, last taken first; storages left without users (and
// not kept for the sandbox) are torn down. A nil refs is none.
func (m *Manager) Drop(refs *Refs) error {
	if refs == nil {
		return nil
	}
	return m.release(refs.refs)
}

// addOne takes a reference on s's mount point, setting it up (isNew) if
// it is the first.
func (m *Manager) addOne(ctx context.Context, owner, field string, s Storage) (r ref, isNew bool, err error) {
	m.mu.Lock()
	for {
		e, ok := m.entries[s.MountPoint]
		if !ok || e.closing == nil {
			break
		}
		m.mu.Unlock()
		select {
		case <-e.closing:
		case <-ctx.Done():
			return ref{}, false, ctx.Err()
		}
		m.mu.Lock()
	}
	if e, ok := m.entries[s.MountPoint]; ok {
		if e.driver != s.Driver {
			m.mu.Unlock()
			return ref{}, false, invalidf("%s.mount_point %q: already used by a %s storage", field, s.MountPoint, e.driver)
		}
		e.refs++
		m.mu.Unlock()
		r := ref{s.MountPoint, e}
		select {
		case <-e.ready:
		case <-ctx.Done():
			m.releaseOne(r, false)
			return ref{}, false, ctx.Err()
		}
		if e.err != nil {
			m.releaseOne(r, false)
			return ref{}, false, e.err
		}
		return r, false, nil
	}
	e := &entry{ready: make(chan struct{}), refs: 1, driver: s.Driver,
		keep: owner == "" || s.Shared || s.Driver == DriverEphemeral || s.Driver == DriverLocal}
	m.entries[s.MountPoint] = e
	m.mu.Unlock()

	undo, err := m.setUp(ctx, owner, field, s)
	m.mu.Lock()
	e.undo, e.err = undo, err
	if err != nil {
		delete(m.entries, s.MountPoint)
	}
	close(e.ready)
	m.mu.Unlock()
	if err != nil {
		m.cfg.Log.Warn("storage setup failed", "driver", s.Driver, "mount_point", s.MountPoint, "err", err)
		return ref{}, false, err
	}
	m.cfg.Log.Info("storage ready", "driver", s.Driver, "source", s.Source, "mount_point", s.MountPoint, "owner", owner)
	return ref{s.MountPoint, e}, true, nil
}

// Release drops owner's references; storages left without users (and not
// kept for the sandbox) are torn down. Errors are joined; the references
// are dropped regardless.
func (m *Manager) Release(owner string) error {
	m.mu.Lock()
	refs := m.owners[owner]
	delete(m.owners, owner)
	m.mu.Unlock()
	return m.release(refs)
}

func (m *Manager) release(refs []ref) error {
	var errs []error
	for i := len(refs) - 1; i >= 0; i-- {
		if err := m.releaseOne(refs[i], false); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// releaseOne drops the reference r; the last one tears the storage down
// unless it is kept for the sandbox (force: tear down anyway). A reference
// on an entry no longer in the map (Close tore it down) is dropped with it.
func (m *Manager) releaseOne(r ref, force bool) error {
	mp := r.mp
	m.mu.Lock()
	e, ok := m.entries[mp]
	if !ok || e != r.e {
		m.mu.Unlock()
		return nil
	}
	e.refs--
	last := e.refs <= 0 && (!e.keep || force) && e.closing == nil
	if last {
		e.closing = make(chan struct{})
	}
	m.mu.Unlock()
	if !last {
		return nil
	}
	<-e.ready // refs > 0 until setUp ended, so this does not wait
	var err error
	if e.undo != nil {
		err = e.undo()
	}
	m.mu.Lock()
	if m.entries[mp] == e {
		delete(m.entries, mp)
	}
	close(e.closing)
	m.mu.Unlock()
	return err
}

// Close tears every storage down (DestroySandbox), last set up first.
func (m *Manager) Close() error {
	m.mu.Lock()
	entries := m.entries
	m.entries = map[string]*entry{}
	m.owners = map[string][]ref{}
	// A new sandbox (host mode) gets a fresh polling loop; the storages
	// torn down below keep the old watcher until their undo ran.
	old := m.watch
	m.watch = newWatcher(m)
	m.mu.Unlock()
	old.stop()
	// Unmount deeper mount points first (a volume inside the share).
	mps := make([]string, 0, len(entries))
	for mp := range entries {
		mps = append(mps, mp)
	}
	sortDeepestFirst(mps)
	var errs []error
	for _, mp := range mps {
		e := entries[mp]
		<-e.ready
		if e.closing != nil {
			<-e.closing // its last user is tearing it down
			continue
		}
		if e.undo != nil {
			if err := e.undo(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Refs reports the users of the storage at mount point mp (0: none).
func (m *Manager) Refs(mp string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.entries[mp]; ok {
		return e.refs
	}
	return 0
}

// validate checks what every driver needs.
func (m *Manager) validate(field string, s *Storage) error {
	if s.Driver == "" {
		return invalidf("%s.driver: empty", field)
	}
	if _, ok := drivers[s.Driver]; !ok {
		if why, ok := kataOnly[s.Driver]; ok {
			return fmt.Errorf("%w: %s.driver %q: %s", ErrUnsupported, field, s.Driver, why)
		}
		return invalidf("%s.driver %q: unknown (known: %s)", field, trunc(s.Driver), driverNames())
	}
	if s.Driver == DriverMultiLayerErofs {
		// A group: each of its storages is checked, named by its index.
		if _, _, err := m.validateLayers(field, *s); err != nil {
			return err
		}
	}
	if _, err := checkMountPoint(field+".mount_point", s.MountPoint, m.cfg.Roots); err != nil {
		return err
	}
	if _, _, err := parseOptions(field+".options", s.Options); err != nil {
		return err
	}
	return nil
}
