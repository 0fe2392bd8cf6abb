package uevent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// rcvBuf is the socket receive buffer asked for: a burst of hot-plugged
// devices (dozens of uevents each) must not overflow it while the agent
// is busy. Dropped events are still recovered (Registry.Lost).
const rcvBuf = 4 << 20

// kernelGroup is the multicast group of the kernel's own uevents (udev
// re-broadcasts on group 2, which Keel's guest has no use for).
const kernelGroup = 1

// Listener reads the kernel's uevents and hands them to a Registry.
type Listener struct {
	f    *os.File
	reg  *Registry
	log  *slog.Logger
	done chan struct{}
	once sync.Once
}

// Listen opens the NETLINK_KOBJECT_UEVENT socket and starts delivering
// its events to reg, until Close. Open it once, early (at boot): events
// before it opened are found in sysfs by Wait anyway.
func Listen(reg *Registry, log *slog.Logger) (*Listener, error) {
	if log == nil {
		log = slog.Default()
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return nil, fmt.Errorf("unable to open the uevent socket: %w", err)
	}
	// SO_RCVBUFFORCE passes rmem_max (we are root); fall back quietly.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBuf)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: kernelGroup}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("unable to bind the uevent socket: %w", err)
	}
	l := &Listener{f: os.NewFile(uintptr(fd), "uevent"), reg: reg, log: log, done: make(chan struct{})}
	go l.loop()
	return l, nil
}

// Close stops the listener and waits for its goroutine.
func (l *Listener) Close() error {
	var err error
	l.once.Do(func() {
		err = l.f.Close()
		<-l.done
	})
	return err
}

func (l *Listener) loop() {
	defer close(l.done)
	rc, err := l.f.SyscallConn()
	if err != nil {
		l.log.Error("uevent listener", "err", err)
		return
	}
	buf := make([]byte, MaxMessage+1)
	for {
		var n int
		var from unix.Sockaddr
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		})
		if err != nil { // closed
			if !errors.Is(err, os.ErrClosed) {
				l.log.Error("uevent listener stopped", "err", err)
			}
			return
		}
		switch {
		case rerr == unix.ENOBUFS:
			l.log.Warn("uevents dropped (socket buffer full): waiters look in sysfs again")
			l.reg.Lost()
			continue
		case rerr == unix.EINTR:
			continue
		case rerr != nil:
			l.log.Error("uevent listener stopped", "err", rerr)
			return
		}
		// Only the kernel (port id 0) speaks for devices; a process
		// sending on the group would otherwise fake them.
		if nl, ok := from.(*unix.SockaddrNetlink); !ok || nl.Pid != 0 {
			continue
		}
		ev, err := Parse(buf[:n])
		if err != nil {
			l.log.Debug("ignoring uevent", "err", err)
			continue
		}
		l.log.Debug("uevent", "action", ev.Action, "devpath", ev.DevPath, "subsystem", ev.Subsystem, "devname", ev.DevName)
		l.reg.Deliver(ev)
	}
}
