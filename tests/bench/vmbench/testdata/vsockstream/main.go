// Command vsockstream is the producer of the stdout benchmarks, run as a
// container process: it writes -bytes bytes of a fixed pattern (byte i is
// i % 251, so the reader can check every byte) in -chunk writes, either to
// stdout (read by the host over ReadStdout or passfd) or, with -listen, to
// the first connection accepted on that AF_VSOCK port (the raw baseline: the
// same bytes from the same container over the same vsock device, with no
// agent in between).
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Period is the pattern's period, prime so it never lines up with a chunk.
const Period = 251

func main() {
	n := flag.Int64("bytes", 64<<20, "bytes to write")
	chunk := flag.Int("chunk", 64<<10, "bytes per write")
	port := flag.Uint("listen", 0, "write to the first connection accepted on this vsock port instead of stdout")
	cpustat := flag.Bool("cpustat", false, "print the guest's and this process's CPU time over the writes on stderr")
	flag.Parse()
	if *chunk <= 0 || *n < 0 {
		fail(fmt.Errorf("-chunk must be positive and -bytes not negative"))
	}
	fd := 1
	if *port != 0 {
		var err error
		if fd, err = accept(uint32(*port)); err != nil {
			fail(err)
		}
	}
	// A buffer one period longer than a chunk: every write starts at the
	// pattern offset of its stream position.
	buf := make([]byte, *chunk+Period)
	for i := range buf {
		buf[i] = byte(i % Period)
	}
	var start cpuTimes
	if *cpustat {
		start = readCPU()
	}
	for off := int64(0); off < *n; {
		w := min(int64(*chunk), *n-off)
		start := int(off % Period)
		m, err := unix.Write(fd, buf[start:start+int(w)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			fail(fmt.Errorf("write at %d: %w", off, err))
		}
		off += int64(m)
	}
	if *cpustat {
		// After the last write, before EOF: the bytes still in flight (at
		// most a pipe or a socket buffer) are moved after this.
		end := readCPU()
		fmt.Fprintf(os.Stderr, "cpustat busy=%d idle=%d self=%d\n", end.busy-start.busy, end.idle-start.idle, end.self-start.self)
	}
	if fd != 1 {
		_ = unix.Shutdown(fd, unix.SHUT_WR)
		// Wait for the reader to close, so no byte is lost with the socket.
		var b [1]byte
		_, _ = unix.Read(fd, b[:])
		_ = unix.Close(fd)
	}
}

func accept(port uint32) (int, error) {
	l, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Bind(l, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		return -1, fmt.Errorf("bind vsock port %d: %w", port, err)
	}
	if err := unix.Listen(l, 1); err != nil {
		return -1, fmt.Errorf("listen: %w", err)
	}
	// The host learns the listener is up from this line on stderr.
	fmt.Fprintf(os.Stderr, "listening %d\n", port)
	for {
		c, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("accept: %w", err)
		}
		_ = unix.Close(l)
		return c, nil
	}
}

// cpuTimes are the guest's busy and idle time (/proc/stat's cpu line, all
// of them in USER_HZ ticks, converted to µs) and this process's own
// (getrusage: user + system), in µs.
type cpuTimes struct{ busy, idle, self int64 }

func readCPU() cpuTimes {
	var t cpuTimes
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		fail(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		fail(fmt.Errorf("/proc/stat: %q", line))
	}
	for i, v := range f[1:9] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			fail(fmt.Errorf("/proc/stat: %q", line))
		}
		// USER_HZ is 100: a tick is 10,000 µs. Fields 4 and 5 are idle
		// and iowait.
		n *= 10000
		if i == 3 || i == 4 {
			t.idle += n
		} else {
			t.busy += n
		}
	}
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		fail(err)
	}
	t.self = (ru.Utime.Nano() + ru.Stime.Nano()) / 1000
	return t
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "vsockstream:", err)
	os.Exit(1)
}
