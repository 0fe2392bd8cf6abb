package storage

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// noOpenat2 is set once openat2 turned out missing (ENOSYS, kernels before
// 5.6), or by tests to exercise the fallback.
var noOpenat2 atomic.Bool

// openBeneath opens rel below the directory dirfd without following a
// symlink anywhere on the way, the last component included, and without
// leaving dirfd's tree: openat2 with RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS
// where the kernel has it, else one O_NOFOLLOW openat per component from a
// held directory fd. rel is relative and clean ("" or "." is dirfd itself);
// "..", absolute names and empty components are refused. A component
// swapped for a symlink fails with ELOOP or ENOTDIR: what a symlink points
// to is never opened.
func openBeneath(dirfd int, rel string, flags int) (int, error) {
	if rel == "" {
		rel = "."
	}
	comps := strings.Split(rel, "/")
	if rel != "." {
		for _, c := range comps {
			if c == "" || c == "." || c == ".." {
				return -1, fmt.Errorf("%q: not a clean relative path: %w", rel, unix.EINVAL)
			}
		}
	}
	flags |= unix.O_NOFOLLOW | unix.O_CLOEXEC
	if !noOpenat2.Load() {
		fd, err := unix.Openat2(dirfd, rel, &unix.OpenHow{Flags: uint64(flags),
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
		if !errors.Is(err, unix.ENOSYS) {
			return fd, err
		}
		noOpenat2.Store(true)
	}
	if rel == "." {
		return unix.Openat(dirfd, ".", flags, 0)
	}
	cur := dirfd
	for _, c := range comps[:len(comps)-1] {
		fd, err := unix.Openat(cur, c, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if cur != dirfd {
			unix.Close(cur)
		}
		if err != nil {
			return -1, err
		}
		cur = fd
	}
	fd, err := unix.Openat(cur, comps[len(comps)-1], flags, 0)
	if cur != dirfd {
		unix.Close(cur)
	}
	return fd, err
}

// openNoSymlinks opens the absolute path without following a symlink in
// any of its components.
func openNoSymlinks(path string, flags int) (int, error) {
	if !strings.HasPrefix(path, "/") {
		return -1, fmt.Errorf("%q: not absolute: %w", path, unix.EINVAL)
	}
	root, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(root)
	return openBeneath(root, strings.Trim(path, "/"), flags)
}
