// Command vsockinit is /init of the vsockdev VM smoke test: it loads the
// modules listed in /modules.list (guest paths in load order), then serves
// AF_VSOCK ports and dials the host, printing progress on the console.
//
//	1024  echo
//	1026  sink: read to EOF, answer the byte count as a decimal line
//	1027  source: read "N\n", write N bytes, close
//
// After listening it prints "VSOCKINIT READY", then dials CID 2 port 1025,
// sends "hello from guest\n" and prints "GUEST GOT <reply line>".
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

func main() {
	if err := run(); err != nil {
		fmt.Println("VSOCKINIT FAILED:", err)
	}
	for {
		time.Sleep(time.Hour) // PID 1 must not exit
	}
}

func run() error {
	// mdlayher/vsock asks /dev/vsock for the local CID.
	if err := unix.Mount("devtmpfs", "/dev", "devtmpfs", 0, ""); err != nil && err != unix.EBUSY {
		return fmt.Errorf("mount /dev: %w", err)
	}
	list, err := os.ReadFile("/modules.list")
	if err != nil {
		return err
	}
	for _, p := range strings.Fields(string(list)) {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && err != unix.EEXIST {
			return fmt.Errorf("finit_module %s: %w", p, err)
		}
	}
	serve := func(port uint32, h func(net.Conn)) error {
		ln, err := vsock.Listen(port, nil)
		if err != nil {
			return fmt.Errorf("listen %d: %w", port, err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					fmt.Println("accept:", err)
					return
				}
				go func() { defer c.Close(); h(c) }()
			}
		}()
		return nil
	}
	if err := serve(1024, func(c net.Conn) { io.Copy(c, c) }); err != nil {
		return err
	}
	if err := serve(1026, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "%d\n", n)
	}); err != nil {
		return err
	}
	if err := serve(1027, func(c net.Conn) {
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return
		}
		n, _ := strconv.Atoi(strings.TrimSpace(line))
		buf := make([]byte, 64<<10)
		for i := range buf {
			buf[i] = byte(i)
		}
		for n > 0 {
			m, err := c.Write(buf[:min(n, len(buf))])
			if err != nil {
				return
			}
			n -= m
		}
	}); err != nil {
		return err
	}
	fmt.Println("VSOCKINIT READY")

	var c net.Conn
	for range 50 {
		if c, err = vsock.Dial(vsock.Host, 1025, nil); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("dial host 1025: %w", err)
	}
	defer c.Close()
	fmt.Fprint(c, "hello from guest\n")
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read reply: %w", err)
	}
	fmt.Println("GUEST GOT", strings.TrimSpace(reply))
	return nil
}
