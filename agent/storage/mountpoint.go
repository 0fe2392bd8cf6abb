package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// target is a mount point opened without following symlinks, and what was
// created to make it (removed again on failure or teardown).
type target struct {
	path    string   // as requested
	created []string // paths created, parents first
}

// checkMountPoint refuses a mount point that is not a clean absolute path
// under one of roots; it returns the root it is under.
func checkMountPoint(field, mp string, roots []string) (string, error) {
	if mp == "" {
		return "", invalidf("%s: empty", field)
	}
	if !filepath.IsAbs(mp) || filepath.Clean(mp) != mp || strings.ContainsRune(mp, 0) {
		return "", invalidf("%s %q: want a clean absolute path", field, trunc(mp))
	}
	for _, r := range roots {
		if mp == r || strings.HasPrefix(mp, r+"/") {
			return r, nil
		}
	}
	return "", invalidf("%s %q: outside the agent's storage roots %v", field, trunc(mp), roots)
}

// makeTarget creates (as needed) mount point mp below root, refusing any
// symlink on the way: the shared directory's content comes from the host
// and a container, either of which could plant a link to /etc. The root
// itself is created with MkdirAll (it is the agent's own). dir says
// whether the last component is a directory or a file (bind of a file).
func makeTarget(root, mp string, dir bool) (*target, *os.File, error) {
	t := &target{path: mp}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, nil, fmt.Errorf("unable to create storage root %s: %w", root, err)
	}
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("unable to open storage root %s: %w", root, err)
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(mp, root), "/")
	cur := root
	comps := []string{}
	if rel != "" {
		comps = strings.Split(rel, "/")
	}
	fail := func(err error) (*target, *os.File, error) {
		unix.Close(fd)
		t.removeCreated()
		return nil, nil, err
	}
	for i, c := range comps {
		last := i == len(comps)-1
		cur = filepath.Join(cur, c)
		if last && !dir {
			nfd, err := unix.Openat(fd, c, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
			if err == nil {
				unix.Close(nfd)
				t.created = append(t.created, cur)
			} else if !errors.Is(err, unix.EEXIST) {
				return fail(fmt.Errorf("unable to create %s: %w", cur, err))
			}
		} else if err := unix.Mkdirat(fd, c, 0o755); err == nil {
			t.created = append(t.created, cur)
		} else if !errors.Is(err, unix.EEXIST) {
			return fail(fmt.Errorf("unable to create %s: %w", cur, err))
		}
		how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC | unix.O_NOFOLLOW, Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_BENEATH}
		if !last || dir {
			how.Flags |= unix.O_DIRECTORY
		}
		nfd, err := unix.Openat2(fd, c, how)
		if err != nil {
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
				return fail(invalidf("mount_point %q: %s is a symlink or not a directory", mp, cur))
			}
			return fail(fmt.Errorf("unable to open %s: %w", cur, err))
		}
		unix.Close(fd)
		fd = nfd
	}
	return t, os.NewFile(uintptr(fd), mp), nil
}

// removeCreated removes, deepest first, what makeTarget created; a
// directory that is no longer empty is left.
func (t *target) removeCreated() {
	for i := len(t.created) - 1; i >= 0; i-- {
		_ = os.Remove(t.created[i])
	}
	t.created = nil
}

// mountAt mounts onto the opened target through its /proc/self/fd link,
// so the path is not resolved again (no race with a planted symlink).
func mountAt(f *os.File, source, fstype string, flags uintptr, data string) error {
	return unix.Mount(source, fmt.Sprintf("/proc/self/fd/%d", f.Fd()), fstype, flags, data)
}

// unmount detaches the mount at mp (lazily if busy: a container process
// may still hold a file open).
func unmount(mp string) error {
	err := unix.Unmount(mp, unix.UMOUNT_NOFOLLOW)
	if errors.Is(err, unix.EBUSY) {
		err = unix.Unmount(mp, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
	}
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unable to unmount %s: %w", mp, err)
	}
	return nil
}

// isMountPoint reports whether mp is the root of a mount.
func isMountPoint(mp string) bool {
	var st, pst unix.Stat_t
	if unix.Lstat(mp, &st) != nil || unix.Lstat(filepath.Dir(mp), &pst) != nil {
		return false
	}
	if st.Dev != pst.Dev {
		return true
	}
	// Same device (a bind of the same fs): ask mountinfo.
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && unescapeMount(f[4]) == mp {
			return true
		}
	}
	return false
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
