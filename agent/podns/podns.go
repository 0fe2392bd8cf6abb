// Package podns keeps the namespaces a Kata sandbox (pod) shares between
// its containers, as Kata's agent does: CreateSandbox creates one IPC and
// one UTS namespace (the UTS one carrying the pod's hostname) and keeps
// them alive without any process in them; every container joins them by
// path. The pod's pid namespace (sandbox_pidns) is its first container's,
// pinned the same way so that a recycled pid can never redirect a join.
//
// Kata's agent pins with bind mounts of the nsfs files; here the agent
// holds an open descriptor of each namespace and containers join it
// through /proc/<agent pid>/fd/<n>. Nothing enters the mount table (no
// unmount to forget, nothing left behind if the agent dies, nothing other
// processes of a test host see), and releasing is closing.
//
// It also identifies namespace files: Is tells whether a path given in a
// spec names one of the agent's own namespaces, whatever the path
// (/proc/1/ns/pid, /proc/self/ns/pid, a bind mount of either), by the
// nsfs inode.
package podns

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Names of the nsfs files (/proc/<pid>/ns/<name>) by namespace kind, the
// kinds being the runtime-spec's names.
var nsFile = map[string]string{
	"pid": "pid", "network": "net", "mount": "mnt", "ipc": "ipc",
	"uts": "uts", "user": "user", "cgroup": "cgroup", "time": "time",
}

var cloneFlag = map[string]int{
	"pid": unix.CLONE_NEWPID, "network": unix.CLONE_NEWNET, "mount": unix.CLONE_NEWNS, "ipc": unix.CLONE_NEWIPC,
	"uts": unix.CLONE_NEWUTS, "user": unix.CLONE_NEWUSER, "cgroup": unix.CLONE_NEWCGROUP, "time": unix.CLONE_NEWTIME,
}

// Pinned is a namespace kept alive by an open descriptor of the agent.
type Pinned struct {
	Kind string // runtime-spec namespace type: "ipc", "uts", "pid"
	Path string // /proc/<agent pid>/fd/<n>; join it by this path
	f    *os.File
}

func pin(kind string, f *os.File) *Pinned {
	return &Pinned{Kind: kind, Path: fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd()), f: f}
}

// Release drops the pin. The namespace dies with its last member.
func (p *Pinned) Release() error {
	if p == nil || p.f == nil {
		return nil
	}
	err := p.f.Close()
	p.f = nil
	if err != nil {
		return fmt.Errorf("unable to release the %s namespace: %w", p.Kind, err)
	}
	return nil
}

// NewIPCUTS creates a new IPC namespace and a new UTS namespace whose
// hostname is hostname (when not empty) and pins them. No process of the
// agent enters them: the work happens on a locked OS thread that exits
// afterwards (Go discards a thread that is still locked when its goroutine
// returns, so the unshared thread is never reused). The process's main
// thread must be locked to its goroutine (runtime.LockOSThread in an init
// function, as keel-agent does): Go never discards the main thread, so
// unsharing it would move the whole agent; the unshare is refused on it.
func NewIPCUTS(hostname string) (ipc, uts *Pinned, err error) {
	type result struct {
		ipc, uts *os.File
		err      error
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread is in namespaces the agent's
		// other goroutines must never run in.
		i, u, err := unshareAndOpen(hostname)
		res <- result{i, u, err}
	}()
	r := <-res
	if r.err != nil {
		return nil, nil, r.err
	}
	return pin("ipc", r.ipc), pin("uts", r.uts), nil
}

var errMainThread = errors.New("unable to create the sandbox's namespaces: on the main thread, which must be locked by the program's init")

func unshareAndOpen(hostname string) (ipc, uts *os.File, err error) {
	if unix.Gettid() == unix.Getpid() {
		return nil, nil, errMainThread
	}
	if err := unix.Unshare(unix.CLONE_NEWIPC | unix.CLONE_NEWUTS); err != nil {
		return nil, nil, fmt.Errorf("unable to create the sandbox's IPC and UTS namespaces: %w", err)
	}
	if hostname != "" {
		if err := unix.Sethostname([]byte(hostname)); err != nil {
			return nil, nil, fmt.Errorf("unable to set the sandbox hostname %q: %w", hostname, err)
		}
	}
	tid := unix.Gettid()
	if ipc, err = os.Open(fmt.Sprintf("/proc/self/task/%d/ns/ipc", tid)); err != nil {
		return nil, nil, fmt.Errorf("unable to pin the sandbox's IPC namespace: %w", err)
	}
	if uts, err = os.Open(fmt.Sprintf("/proc/self/task/%d/ns/uts", tid)); err != nil {
		ipc.Close()
		return nil, nil, fmt.Errorf("unable to pin the sandbox's UTS namespace: %w", err)
	}
	return ipc, uts, nil
}

// PinPid pins the pid namespace of process pid (the sandbox's shared pid
// namespace, taken from its first container's init while it is alive).
func PinPid(pid int) (*Pinned, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/pid", pid))
	if err != nil {
		return nil, fmt.Errorf("unable to pin the pid namespace of pid %d: %w", pid, err)
	}
	return pin("pid", f), nil
}

// ErrNotNamespace is returned by Is for a path that is not a namespace file
// of the expected kind.
var ErrNotNamespace = errors.New("not a namespace file")

// Is reports whether path is a namespace file of kind (runtime-spec name)
// and whether it is the agent's own namespace of that kind (same nsfs
// inode as /proc/self/ns/<kind>). The path is opened with O_PATH first, so
// a FIFO or device planted there cannot block or be opened for real.
func Is(kind, path string) (agents bool, err error) {
	name, ok := nsFile[kind]
	if !ok {
		return false, fmt.Errorf("%q: unknown namespace type", kind)
	}
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	defer unix.Close(fd)
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	if sfs.Type != unix.NSFS_MAGIC {
		return false, fmt.Errorf("%s: %w", path, ErrNotNamespace)
	}
	// nsfs files can be opened for reading without side effects; the
	// type ioctl needs a real descriptor.
	rfd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	defer unix.Close(rfd)
	t, err := unix.IoctlRetInt(rfd, unix.NS_GET_NSTYPE)
	if err != nil {
		return false, fmt.Errorf("%s: unable to read the namespace type: %w", path, err)
	}
	if t != cloneFlag[kind] {
		return false, fmt.Errorf("%s: a namespace of another type, not %s: %w", path, kind, ErrNotNamespace)
	}
	var got, own unix.Stat_t
	if err := unix.Fstat(rfd, &got); err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	if err := unix.Stat("/proc/self/ns/"+name, &own); err != nil {
		return false, fmt.Errorf("unable to stat the agent's own %s namespace: %w", kind, err)
	}
	return got.Dev == own.Dev && got.Ino == own.Ino, nil
}
