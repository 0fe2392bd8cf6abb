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

	"golang.org/x/sys/unix"
)

// Period is the pattern's period, prime so it never lines up with a chunk.
const Period = 251

func main() {
	n := flag.Int64("bytes", 64<<20, "bytes to write")
	chunk := flag.Int("chunk", 64<<10, "bytes per write")
	port := flag.Uint("listen", 0, "write to the first connection accepted on this vsock port instead of stdout")
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

func fail(err error) {
	fmt.Fprintln(os.Stderr, "vsockstream:", err)
	os.Exit(1)
}
