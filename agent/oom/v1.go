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
	efd  *os.File
	once sync.Once
}

func (v *v1Watch) stop() { v.once.Do(func() { v.efd.Close() }) }

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
	v := &v1Watch{efd: efd}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer done(v)
		defer v.stop()
		buf := make([]byte, 8)
		for {
			if _, err := v.efd.Read(buf); err != nil {
				return // stopped
			}
			// The eventfd also fires when the cgroup is removed.
			if _, err := os.Stat(filepath.Join(dir, "cgroup.event_control")); err != nil {
				return
			}
			notify()
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
