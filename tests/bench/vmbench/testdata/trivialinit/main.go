// Command trivialinit is the baseline of the P6 boot benchmark: a static Go
// PID 1 that does nothing but open an AF_VSOCK listener on the agent's port
// (1024). Each connection it accepts gets one line with the guest uptime
// (CLOCK_BOOTTIME, seconds) at which main started and at which the listener
// was ready (the same two milestones keel-agent reports as
// keel.boot.init_start and keel.boot.listener_ready) and at which it
// accepted that connection. It mounts nothing and
// imports only x/sys, so it measures what the kernel and the Go runtime
// cost before any init can listen.
package main

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

const port = 1024

func uptime() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return -1
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

func main() {
	start := uptime()
	fd, err := listen()
	if err != nil {
		fail(err)
	}
	ready := uptime()
	for {
		c, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
		if err != nil {
			if err == unix.EINTR || err == unix.ECONNABORTED {
				continue
			}
			fail(err)
		}
		line := fmt.Sprintf("init_start=%.6f listener_ready=%.6f accepted=%.6f\n", start, ready, uptime())
		_, _ = unix.Write(c, []byte(line))
		_ = unix.Close(c)
	}
}

func listen() (int, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		return -1, fmt.Errorf("bind: %w", err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		return -1, fmt.Errorf("listen: %w", err)
	}
	return fd, nil
}

// fail reports on the console and keeps PID 1 alive (its exit would panic
// the kernel and hide the message).
func fail(err error) {
	fmt.Fprintln(os.Stderr, "trivialinit:", err)
	for {
		time.Sleep(time.Hour)
	}
}
