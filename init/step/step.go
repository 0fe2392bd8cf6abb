// Package step models PID 1 boot work as data, in the style of u-root's
// libinit: every step renders as the shell line it replaces (String) and
// performs it (Run). A boot plan is a []Step built by pure functions (see
// init/mounts) and executed by Run, which logs each line, fails loudly on a
// required step and only warns on an optional one.
package step

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Step is one unit of boot work.
type Step interface {
	// String is the shell command the step replaces, e.g.
	// "mount -t proc -o nosuid,nodev,noexec proc /proc".
	String() string
	// Run performs the step.
	Run() error
	// Optional reports whether a failure is only a warning.
	Optional() bool
}

// Run executes steps in order, logging each. It returns the first error of
// a required step (an *Error naming the step's shell line); optional
// failures are logged at warn level and skipped.
func Run(log *slog.Logger, steps []Step) error { return RunReporting(log, steps, nil) }

// RunReporting is Run that also calls report (when not nil) with each
// step's shell line before running it, so a watcher can say which step a
// stuck boot is in (agent/bootgate).
func RunReporting(log *slog.Logger, steps []Step, report func(line string)) error {
	for _, s := range steps {
		if report != nil {
			report(s.String())
		}
		start := time.Now()
		err := s.Run()
		switch {
		case err == nil:
			log.Debug(s.String(), "took", time.Since(start))
		case s.Optional():
			log.Warn(s.String(), "err", err)
		default:
			log.Error(s.String(), "err", err)
			return &Error{Line: s.String(), Err: err}
		}
	}
	return nil
}

// Error is a required step's failure.
type Error struct {
	Line string // the step's shell line
	Err  error
}

func (e *Error) Error() string { return fmt.Sprintf("boot step %q: %v", e.Line, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// BootStep names the failed step (agent/bootgate asks for it so as not to
// name it twice).
func (e *Error) BootStep() string { return e.Line }

// Mkdir is `mkdir -p -m MODE PATH`.
type Mkdir struct {
	Path string
	Mode os.FileMode
	Opt  bool
}

func (m Mkdir) String() string { return fmt.Sprintf("mkdir -p -m %04o %s", m.Mode.Perm(), m.Path) }
func (m Mkdir) Run() error     { return os.MkdirAll(m.Path, m.Mode) }
func (m Mkdir) Optional() bool { return m.Opt }

// Mount is `mount -t FSTYPE -o OPTS SOURCE TARGET`. When the mount fails
// with EINVAL and Fallback is set, it is retried with Fallback as data (for
// options newer kernels understand, such as cgroup2 nsdelegate).
type Mount struct {
	Source   string
	Target   string
	FSType   string
	Flags    uintptr
	Data     string
	Fallback *string
	Opt      bool
}

var flagNames = []struct {
	f    uintptr
	name string
}{
	{unix.MS_RDONLY, "ro"}, {unix.MS_NOSUID, "nosuid"}, {unix.MS_NODEV, "nodev"},
	{unix.MS_NOEXEC, "noexec"}, {unix.MS_BIND, "bind"}, {unix.MS_REC, "rec"},
	{unix.MS_MOVE, "move"}, {unix.MS_RELATIME, "relatime"}, {unix.MS_PRIVATE, "private"},
	{unix.MS_SHARED, "shared"}, {unix.MS_SLAVE, "slave"},
}

// Options renders mount flags and data as mount(8)'s -o argument.
func Options(flags uintptr, data string) string {
	var o []string
	for _, f := range flagNames {
		if flags&f.f != 0 {
			o = append(o, f.name)
		}
	}
	if data != "" {
		o = append(o, data)
	}
	return strings.Join(o, ",")
}

func (m Mount) String() string {
	s := "mount"
	if m.FSType != "" {
		s += " -t " + m.FSType
	}
	if o := Options(m.Flags, m.Data); o != "" {
		s += " -o " + o
	}
	return s + " " + m.Source + " " + m.Target
}

func (m Mount) Run() error {
	err := unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data)
	if errors.Is(err, unix.EINVAL) && m.Fallback != nil {
		err = unix.Mount(m.Source, m.Target, m.FSType, m.Flags, *m.Fallback)
	}
	if errors.Is(err, unix.EBUSY) && m.Flags&(unix.MS_BIND|unix.MS_MOVE|unix.MS_REMOUNT) == 0 {
		// A kernel booted without an initramfs may have mounted it already
		// (CONFIG_DEVTMPFS_MOUNT puts devtmpfs on /dev): that is the state
		// this step wants, so it is done.
		if mi, rerr := os.ReadFile("/proc/self/mountinfo"); rerr == nil && MountedAs(string(mi), m.Target, m.FSType) {
			return nil
		}
	}
	if err != nil {
		return &os.PathError{Op: "mount", Path: m.Target, Err: err}
	}
	return nil
}
func (m Mount) Optional() bool { return m.Opt }

// MountedAs reports whether mountinfo (the text of /proc/self/mountinfo)
// has a mount of type fstype on target.
func MountedAs(mountinfo, target, fstype string) bool {
	for _, line := range strings.Split(mountinfo, "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f := strings.Fields(pre)
		g := strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 1 {
			continue
		}
		if f[4] == target && g[0] == fstype {
			return true
		}
	}
	return false
}

// Symlink is `ln -sfn TARGET LINK` (an existing non-directory LINK is replaced).
type Symlink struct {
	Target string
	Link   string
	Opt    bool
}

func (s Symlink) String() string { return fmt.Sprintf("ln -sfn %s %s", s.Target, s.Link) }
func (s Symlink) Run() error {
	if cur, err := os.Readlink(s.Link); err == nil && cur == s.Target {
		return nil
	}
	if err := os.Remove(s.Link); err != nil && !os.IsNotExist(err) {
		return err
	}
	return os.Symlink(s.Target, s.Link)
}
func (s Symlink) Optional() bool { return s.Opt }

// Write is `echo DATA > PATH` (the file must exist; no create, no truncate
// semantics beyond what the kernel file offers, as for /proc and cgroupfs).
type Write struct {
	Path string
	Data string
	Opt  bool
}

func (w Write) String() string { return fmt.Sprintf("echo %q > %s", w.Data, w.Path) }
func (w Write) Run() error {
	f, err := os.OpenFile(w.Path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(w.Data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
func (w Write) Optional() bool { return w.Opt }

// Func is a step implemented by a Go function; Line is its shell equivalent.
type Func struct {
	Line string
	Fn   func() error
	Opt  bool
}

func (f Func) String() string { return f.Line }
func (f Func) Run() error     { return f.Fn() }
func (f Func) Optional() bool { return f.Opt }

// Mknod is `mknod -m MODE PATH c|b MAJOR MINOR`.
type Mknod struct {
	Path         string
	Mode         uint32
	Block        bool // block device (default: character device)
	Major, Minor uint32
	Opt          bool
}

func (m Mknod) String() string {
	kind := "c"
	if m.Block {
		kind = "b"
	}
	return fmt.Sprintf("mknod -m %04o %s %s %d %d", m.Mode, m.Path, kind, m.Major, m.Minor)
}
func (m Mknod) Run() error {
	typ := uint32(unix.S_IFCHR)
	if m.Block {
		typ = unix.S_IFBLK
	}
	if err := unix.Mknod(m.Path, typ|m.Mode, int(unix.Mkdev(m.Major, m.Minor))); err != nil && !errors.Is(err, unix.EEXIST) {
		return &os.PathError{Op: "mknod", Path: m.Path, Err: err}
	}
	return unix.Chmod(m.Path, m.Mode) // not subject to umask
}
func (m Mknod) Optional() bool { return m.Opt }
