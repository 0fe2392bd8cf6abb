package storage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Kata's watchable-bind limits: beyond them the storage becomes a plain
// bind mount (no longer updated by copy). Entries are counted as Kata's
// watcher (src/agent/src/watcher.rs) holds them: the source itself, and
// every directory, file, symlink and other entry below it; bytes are the
// sizes of the files and symlinks. Kata checks the count only when it
// adds a file or symlink, so a source of directories alone is never over
// its limit there, and a workload planting a million empty directories
// has them all walked and mirrored on every poll; Keel checks at every
// entry and stops listing a directory at the limit, so it walks at most
// WatchMaxEntries+1 entries per poll.
const (
	WatchMaxEntries = 16
	WatchMaxBytes   = 1 << 20
)

// watcher mirrors watchable-bind storages: the source (in the host's
// share, where inotify does not reach) is copied into a tmpfs and copied
// again on every poll when it changed.
type watcher struct {
	m *Manager

	mu      sync.Mutex // guards the maps; never held during I/O
	entries map[string]*watched
	tmpfs   map[string]*watchTmpfs // by watchable directory
	stopc   chan struct{}
	started bool

	syncMu sync.Mutex // serialises copies and teardowns of entries
}

// watchTmpfs is the tmpfs of one watchable directory, shared by its
// storages: the first mounts it, the others wait until that ended; the
// last unmounts it, and a new first waits until that ended.
type watchTmpfs struct {
	users   int
	ready   chan struct{} // closed when the first user's mount ended
	err     error         // the mount's error, valid after ready
	undo    func() error  // unmount, set before ready is closed
	closing chan struct{} // set when the last user left; closed after undo
}

type watched struct {
	src, dst string
	bind     bool                 // over the limits: bind-mounted instead
	seen     map[string]time.Time // relative path -> mtime copied
}

func newWatcher(m *Manager) *watcher {
	return &watcher{m: m, entries: map[string]*watched{}, tmpfs: map[string]*watchTmpfs{}, stopc: make(chan struct{})}
}

func (m *Manager) setUpWatchable(ctx context.Context, _, field string, s Storage) (func() error, error) {
	// The source is in the sandbox share (Kata sends a path under the
	// shared directory), reached without a symlink: what is in the share
	// comes from the host and from containers, and a link there must not
	// mirror /etc into a container.
	if _, err := checkMountPoint(field+".source", s.Source, m.cfg.Roots); err != nil {
		return nil, err
	}
	if real, err := filepath.EvalSymlinks(s.Source); err != nil {
		return nil, invalidf("%s.source %q: %v", field, trunc(s.Source), err)
	} else if real != s.Source {
		return nil, invalidf("%s.source %q: passes through a symlink (to %q)", field, trunc(s.Source), trunc(real))
	}
	st, err := os.Stat(s.Source)
	if err != nil {
		return nil, invalidf("%s.source %q: %v", field, trunc(s.Source), err)
	}
	m.mu.Lock()
	w := m.watch
	m.mu.Unlock()
	// The tmpfs goes on the mount point's directory, which must be a
	// "watchable" directory (Kata: <shared dir>/watchable): never the
	// share itself or anything else a tmpfs would hide.
	dir := filepath.Dir(s.MountPoint)
	if filepath.Base(dir) != "watchable" {
		return nil, invalidf("%s.mount_point %q: a watchable-bind mount point is in a directory named watchable (%s/watchable/...)", field, trunc(s.MountPoint), SharedDir)
	}
	root, err := checkMountPoint(field+".mount_point", dir, m.cfg.Roots)
	if err != nil {
		return nil, err
	}
	// The watchable tmpfs: one per directory, mounted with its first storage.
	dropTmpfs, err := w.useTmpfs(ctx, root, dir)
	if err != nil {
		return nil, err
	}
	e := &watched{src: s.Source, dst: s.MountPoint, seen: map[string]time.Time{}}
	if st.IsDir() {
		err = os.Mkdir(e.dst, 0o755)
	} else {
		err = os.WriteFile(e.dst, nil, 0o644)
	}
	if err != nil && !errors.Is(err, os.ErrExist) {
		dropTmpfs()
		return nil, fmt.Errorf("unable to create %s: %w", e.dst, err)
	}
	w.syncMu.Lock()
	err = w.sync(e)
	w.syncMu.Unlock()
	if err != nil {
		os.RemoveAll(e.dst)
		dropTmpfs()
		return nil, fmt.Errorf("%s: unable to copy %s: %w", field, s.Source, err)
	}
	w.mu.Lock()
	w.entries[e.dst] = e
	w.start()
	w.mu.Unlock()
	return func() error {
		w.mu.Lock()
		delete(w.entries, e.dst)
		w.mu.Unlock()
		w.syncMu.Lock()
		var err error
		if e.bind {
			err = unmount(e.dst)
		}
		os.RemoveAll(e.dst)
		w.syncMu.Unlock()
		return errors.Join(err, dropTmpfs())
	}, nil
}

// useTmpfs takes a user of dir's watchable tmpfs, mounting it for the
// first; the returned func drops the user, and the last one unmounts it.
func (w *watcher) useTmpfs(ctx context.Context, root, dir string) (func() error, error) {
	w.mu.Lock()
	for {
		tf := w.tmpfs[dir]
		if tf == nil || tf.closing == nil {
			break
		}
		w.mu.Unlock()
		select {
		case <-tf.closing:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		w.mu.Lock()
	}
	tf := w.tmpfs[dir]
	first := tf == nil
	if first {
		tf = &watchTmpfs{ready: make(chan struct{})}
		w.tmpfs[dir] = tf
	}
	tf.users++
	w.mu.Unlock()
	drop := func() error {
		w.mu.Lock()
		tf.users--
		last := tf.users == 0
		if last {
			tf.closing = make(chan struct{})
		}
		undo := tf.undo
		w.mu.Unlock()
		if !last {
			return nil
		}
		var err error
		if undo != nil {
			err = undo()
		}
		w.mu.Lock()
		if w.tmpfs[dir] == tf {
			delete(w.tmpfs, dir)
		}
		close(tf.closing)
		w.mu.Unlock()
		return err
	}
	if !first {
		select {
		case <-tf.ready:
		case <-ctx.Done():
			drop()
			return nil, ctx.Err()
		}
		if tf.err != nil {
			drop()
			return nil, tf.err
		}
		return drop, nil
	}
	t, f, err := makeTarget(root, dir, true)
	if err == nil {
		err = mountAt(f, "tmpfs", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=755")
		f.Close()
		if err != nil {
			t.removeCreated()
			err = fmt.Errorf("unable to mount the watchable tmpfs on %s: %w", dir, err)
		}
	}
	w.mu.Lock()
	tf.err = err
	if err == nil {
		tf.undo = func() error { err := unmount(dir); t.removeCreated(); return err }
	}
	w.mu.Unlock()
	close(tf.ready)
	if err != nil {
		drop()
		return nil, err
	}
	return drop, nil
}

// start runs the polling loop (once).
func (w *watcher) start() {
	if w.started {
		return
	}
	w.started = true
	go func() {
		t := time.NewTicker(w.m.cfg.WatchInterval)
		defer t.Stop()
		for {
			select {
			case <-w.stopc:
				return
			case <-t.C:
			}
			w.mu.Lock()
			list := make([]*watched, 0, len(w.entries))
			for _, e := range w.entries {
				list = append(list, e)
			}
			w.mu.Unlock()
			for _, e := range list {
				w.syncMu.Lock()
				w.mu.Lock()
				_, live := w.entries[e.dst]
				w.mu.Unlock()
				if live {
					if err := w.sync(e); err != nil {
						w.m.cfg.Log.Warn("watchable storage", "source", e.src, "err", err)
					}
				}
				w.syncMu.Unlock()
			}
		}
	}()
}

func (w *watcher) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	select {
	case <-w.stopc:
	default:
		close(w.stopc)
	}
}

// errTooBig: the source is over Kata's limits (wrapped with which one).
var errTooBig = errors.New("over the watchable limits")

// sync makes e.dst mirror e.src. Over the limits, it bind-mounts the
// source instead and stops copying.
func (w *watcher) sync(e *watched) error {
	if e.bind {
		return nil
	}
	err := mirror(e)
	if !errors.Is(err, errTooBig) {
		return err
	}
	why := err
	// The walk stopped before anything was copied this time; what earlier
	// polls copied goes, so nothing of a mirror stays under the bind.
	if err := os.RemoveAll(e.dst); err != nil {
		return fmt.Errorf("unable to remove the copy %s (over the watchable limits: %v): %w", e.dst, why, err)
	}
	clear(e.seen)
	// Bound through a handle reached without a symlink, so a component of
	// the source swapped since the copy cannot bind anything else.
	src, err := openNoSymlinks(e.src, unix.O_PATH)
	if err != nil {
		return fmt.Errorf("unable to open %s: %w", e.src, err)
	}
	defer unix.Close(src)
	var st unix.Stat_t
	if err := unix.Fstat(src, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		err = os.Mkdir(e.dst, 0o755)
	} else {
		err = os.WriteFile(e.dst, nil, 0o644)
	}
	if err != nil {
		return err
	}
	if err := unix.Mount(fmt.Sprintf("/proc/self/fd/%d", src), e.dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("unable to bind %s (over the watchable limits): %w", e.src, err)
	}
	e.bind = true
	w.m.cfg.Log.Info("watchable storage over the limits: bind-mounted", "source", e.src, "reason", why, "limit_entries", WatchMaxEntries, "limit_bytes", WatchMaxBytes)
	return nil
}

// srcInfo is what mirror needs of a source entry.
type srcInfo struct {
	mode     fs.FileMode // type and permission bits
	size     int64
	mtime    time.Time
	uid, gid int
}

func infoOf(st *unix.Stat_t) srcInfo {
	mode := fs.FileMode(st.Mode & 0o777)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		mode |= fs.ModeDir
	case unix.S_IFLNK:
		mode |= fs.ModeSymlink
	case unix.S_IFREG:
	default:
		mode |= fs.ModeIrregular // devices, fifos, sockets: not mirrored
	}
	return srcInfo{mode: mode, size: st.Size, mtime: time.Unix(st.Mtim.Unix()), uid: int(st.Uid), gid: int(st.Gid)}
}

// watchMaxDepth bounds the directory nesting mirror walks (each level
// holds a directory fd); a deeper source is treated as over the limits.
const watchMaxDepth = 32

// mirror copies what changed in e.src to e.dst and removes what went.
// The source (in the share, which the host and containers write) is read
// only through directory fds held from e.src down, each entry opened
// relative to them without following a symlink: an intermediate directory
// swapped for a symlink between the walk and the copy fails the poll
// instead of having something outside the source read. The copy (mounted
// into containers, which may write it) is written only through an os.Root
// held on e.dst: every step (lstat, mkdir, symlink, temporary file, rename,
// removal) resolves relative to that fd, never follows a symlink out of
// it and never follows the last component of what it removes or replaces,
// so a directory of the copy swapped for a link to /etc is refused, not
// written through. Entries whose type changed are replaced, files are
// written to a temporary name and renamed over.
func mirror(e *watched) error {
	type item struct {
		rel string
		d   srcInfo
	}
	var items []item
	var bytes int64
	entries := 1 // the source itself, as Kata counts it
	tooMany := func() error {
		return fmt.Errorf("%s: more than %d entries (the source and every directory, file, symlink or other entry in it count): %w",
			e.src, WatchMaxEntries, errTooBig)
	}
	// O_PATH: nothing is opened for reading before its type is known (a
	// device node in the share, which has no nodev, must never be). A
	// directory is used as it is (a dirfd for the *at calls); a regular
	// file is reopened for reading by readRegular.
	root, err := openNoSymlinks(e.src, unix.O_PATH)
	if err != nil {
		return fmt.Errorf("unable to open %s: %w", e.src, err)
	}
	defer unix.Close(root)
	var rst unix.Stat_t
	if err := unix.Fstat(root, &rst); err != nil {
		return err
	}
	if st := infoOf(&rst); !st.mode.IsDir() {
		if !st.mode.IsRegular() {
			return fmt.Errorf("%s is not a regular file or directory", e.src)
		}
		if st.size > WatchMaxBytes {
			return fmt.Errorf("%s: %d bytes, more than %d: %w", e.src, st.size, WatchMaxBytes, errTooBig)
		}
		if t, ok := e.seen[""]; ok && t.Equal(st.mtime) {
			return nil
		}
		// e.dst is a file the agent made in its watchable tmpfs: the
		// directory holding it is not in a container.
		dir, err := os.OpenRoot(filepath.Dir(e.dst))
		if err != nil {
			return err
		}
		err = copyFrom(root, e.src, dir, filepath.Base(e.dst), st)
		dir.Close()
		if err != nil {
			return err
		}
		e.seen[""] = st.mtime
		return nil
	}
	var walk func(dir int, rel string, depth int) error
	walk = func(dir int, rel string, depth int) error {
		if depth > watchMaxDepth {
			return fmt.Errorf("%s: nested deeper than %d: %w", e.src, watchMaxDepth, errTooBig)
		}
		// Listing more names than the count has room for is never
		// needed: one more is over the limit.
		names, more, err := readDirNamesAtMost(dir, WatchMaxEntries-entries)
		if err != nil {
			return fmt.Errorf("unable to list %s: %w", filepath.Join(e.src, rel), err)
		}
		if more {
			return tooMany()
		}
		for _, name := range names {
			var st unix.Stat_t
			if err := unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				if errors.Is(err, unix.ENOENT) {
					continue // gone since the listing
				}
				return err
			}
			entries++
			fi := infoOf(&st)
			if entries > WatchMaxEntries {
				return tooMany()
			}
			r := filepath.Join(rel, name)
			switch {
			case fi.mode.IsRegular() || fi.mode&fs.ModeSymlink != 0:
				bytes += fi.size
				if bytes > WatchMaxBytes {
					return fmt.Errorf("%s: more than %d bytes in its files and symlinks: %w", e.src, WatchMaxBytes, errTooBig)
				}
				items = append(items, item{r, fi})
			case fi.mode.IsDir():
				items = append(items, item{r, fi})
				sub, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
				if err != nil {
					return fmt.Errorf("unable to open %s: %w", filepath.Join(e.src, r), err)
				}
				err = walk(sub, r, depth+1)
				unix.Close(sub)
				if err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(root, "", 1); err != nil {
		return err
	}
	droot, err := os.OpenRoot(e.dst)
	if err != nil {
		return fmt.Errorf("unable to open %s: %w", e.dst, err)
	}
	defer droot.Close()
	keep := map[string]bool{}
	for _, it := range items {
		keep[it.rel] = true
		cur, cerr := droot.Lstat(it.rel)
		if cerr == nil && cur.Mode().Type() != it.d.mode.Type() {
			if err := droot.RemoveAll(it.rel); err != nil {
				return err
			}
			delete(e.seen, it.rel)
			cerr = os.ErrNotExist
		}
		switch {
		case it.d.mode.IsDir():
			if cerr != nil {
				if err := droot.Mkdir(it.rel, it.d.mode.Perm()); err != nil {
					return err
				}
			}
		case it.d.mode&fs.ModeSymlink != 0:
			target, err := readlinkBeneath(root, it.rel)
			if err != nil {
				return fmt.Errorf("unable to read the link %s: %w", filepath.Join(e.src, it.rel), err)
			}
			if old, err := droot.Readlink(it.rel); err == nil && old == target {
				continue
			}
			droot.Remove(it.rel)
			if err := droot.Symlink(target, it.rel); err != nil {
				return err
			}
		default:
			if t, ok := e.seen[it.rel]; ok && cerr == nil && t.Equal(it.d.mtime) {
				continue
			}
			src := filepath.Join(e.src, it.rel)
			fd, err := openBeneath(root, it.rel, unix.O_PATH)
			if err != nil {
				return fmt.Errorf("unable to open %s: %w", src, err)
			}
			err = copyFrom(fd, src, droot, it.rel, it.d)
			unix.Close(fd)
			if err != nil {
				return err
			}
			e.seen[it.rel] = it.d.mtime
		}
	}
	// Remove what is gone from the source, deepest first. The listing
	// goes through droot too (WalkDir does not descend into a symlink,
	// and one swapped in for a directory cannot lead out of droot).
	var gone []string
	fs.WalkDir(droot.FS(), ".", func(rel string, d fs.DirEntry, err error) error {
		if err != nil || rel == "." {
			return nil
		}
		if !keep[rel] {
			gone = append(gone, rel)
			delete(e.seen, rel)
			if d.IsDir() {
				return fs.SkipDir
			}
		}
		return nil
	})
	for _, rel := range gone {
		droot.RemoveAll(rel)
	}
	return nil
}

// readDirNames lists the directory dir (the fd stays open and is not
// moved: a duplicate is read).
func readDirNames(dir int) ([]string, error) {
	dup, err := unix.Openat(dir, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), "dir")
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	return names, nil
}

// readDirNamesAtMost lists at most n names of the directory dir (sorted;
// the fd stays open and is not moved) and reports whether it holds more:
// a directory of a million entries costs no more than one of n+1.
func readDirNamesAtMost(dir, n int) (names []string, more bool, err error) {
	if n < 0 {
		n = 0
	}
	dup, err := unix.Openat(dir, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false, err
	}
	f := os.NewFile(uintptr(dup), "dir")
	defer f.Close()
	for len(names) <= n {
		batch, err := f.Readdirnames(n + 1 - len(names))
		names = append(names, batch...)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, false, err
		}
	}
	if len(names) > n {
		return nil, true, nil
	}
	slices.Sort(names)
	return names, false, nil
}

// readlinkBeneath reads the symlink rel below the directory root, its
// parent reached without following a symlink.
func readlinkBeneath(root int, rel string) (string, error) {
	parent, err := openBeneath(root, filepath.Dir(rel), unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return "", err
	}
	defer unix.Close(parent)
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(parent, filepath.Base(rel), buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// copyFrom writes the content of the source file open as fd (named src in
// errors) to rel below dir through a temporary file renamed over it (a
// symlink planted at rel is replaced, not followed; dir keeps every step
// inside it).
func copyFrom(fd int, src string, dir *os.Root, rel string, fi srcInfo) error {
	// The source was opened O_PATH: only a regular file is reopened for
	// reading, through that very handle (a FIFO or device swapped in since
	// the walk is never opened; O_NONBLOCK all the same, so nothing can
	// stall the poll, which holds syncMu).
	in, err := readRegular(fd, src)
	if err != nil {
		return err
	}
	defer in.Close()
	var rnd [8]byte
	rand.Read(rnd[:])
	tmpName := filepath.Join(filepath.Dir(rel), ".keel-watch-"+hex.EncodeToString(rnd[:]))
	tmp, err := dir.OpenFile(tmpName, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(tmp, io.LimitReader(in, WatchMaxBytes+1))
	if err == nil {
		err = tmp.Chmod(fi.mode.Perm())
	}
	if err == nil {
		_ = tmp.Chown(fi.uid, fi.gid)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = dir.Rename(tmpName, rel)
	}
	if err != nil {
		dir.Remove(tmpName)
	}
	return err
}

// readRegular opens for reading what the O_PATH handle fd names, if it is a
// regular file: checked with fstat on the handle, then reopened through
// /proc/self/fd (the same inode, whatever happened to its name since).
func readRegular(fd int, name string) (*os.File, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("%s: %v is not a regular file", name, infoOf(&st).mode.Type())
	}
	rfd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var rst unix.Stat_t
	if err := unix.Fstat(rfd, &rst); err != nil || rst.Dev != st.Dev || rst.Ino != st.Ino {
		unix.Close(rfd)
		return nil, fmt.Errorf("%s: changed while reopened: %w", name, unix.ESTALE)
	}
	return os.NewFile(uintptr(rfd), name), nil
}
