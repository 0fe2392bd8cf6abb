package oom

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// v1Watch waits on an eventfd registered for memory.oom_control.
type v1Watch struct {
	efd    *os.File
	dir    string
	notify func()
	once   sync.Once
	exited chan struct{} // closed when the goroutine reading efd ends
}

// stop ends the watch. The kernel signals the eventfd before it kills,
// but the goroutine may not have read it yet when the container is
// removed right after the kill: stop takes what is pending itself (an
// eventfd read is atomic, so it or the goroutine gets it, never both)
// and waits for the goroutine, so one that already took a signal
// decides on it while the cgroup is still there. The caller stops the
// watch before it removes the cgroup.
func (v *v1Watch) stop() {
	v.once.Do(func() {
		if v.pending() {
			v.signalled()
		}
		v.efd.Close()
	})
	<-v.exited
}

// pending reads the eventfd without blocking (and without the poller's
// read lock, which the goroutine's blocked Read holds).
func (v *v1Watch) pending() bool {
	rc, err := v.efd.SyscallConn()
	if err != nil {
		return false
	}
	var n int
	_ = rc.Control(func(fd uintptr) {
		var buf [8]byte
		n, _ = unix.Read(int(fd), buf[:])
	})
	return n == 8
}

// signalled queues an event for a signal of the eventfd, unless the
// cgroup is gone: the eventfd also fires when the cgroup is removed. It
// reports whether the cgroup is still there.
func (v *v1Watch) signalled() bool {
	if _, err := os.Stat(filepath.Join(v.dir, "cgroup.event_control")); err != nil {
		return false
	}
	v.notify()
	return true
}

func watchV1(dir string, notify func(), done func(watch), wg *sync.WaitGroup) (watch, error) {
	ctl, err := os.Open(filepath.Join(dir, "memory.oom_control"))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoCgroup, err)
	}
	defer ctl.Close() // the kernel holds its own reference once registered
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	efd := os.NewFile(uintptr(fd), "oom-eventfd") // non-blocking: in the poller
	ctlFd, err := fdOf(ctl)
	if err != nil {
		efd.Close()
		return nil, err
	}
	reg := strconv.Itoa(fd) + " " + strconv.Itoa(ctlFd)
	if err := os.WriteFile(filepath.Join(dir, "cgroup.event_control"), []byte(reg), 0); err != nil {
		efd.Close()
		return nil, fmt.Errorf("register oom eventfd: %w", err)
	}
	v := &v1Watch{efd: efd, dir: dir, notify: notify, exited: make(chan struct{})}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(v.exited)
		defer done(v)
		buf := make([]byte, 8)
		for {
			if _, err := v.efd.Read(buf); err != nil {
				return // stopped
			}
			if !v.signalled() {
				v.once.Do(func() { v.efd.Close() })
				return
			}
		}
	}()
	return v, nil
}

// fdOf returns f's descriptor without switching it to blocking mode.
func fdOf(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(u uintptr) { fd = int(u) }); err != nil {
		return -1, err
	}
	return fd, nil
}
