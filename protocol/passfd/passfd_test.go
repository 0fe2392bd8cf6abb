package passfd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeDevice plays a hybrid-vsock device (Firecracker, Cloud Hypervisor)
// or Dragonball's passfd endpoint on a Unix socket; handle serves one
// connection.
func fakeDevice(t *testing.T, handle func(c *net.UnixConn)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hvsock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c.(*net.UnixConn))
			}()
		}
	}()
	return path
}

func TestDialHybrid(t *testing.T) {
	path := fakeDevice(t, func(c *net.UnixConn) {
		line, err := bufio.NewReader(io.LimitReader(c, 14)).ReadString('\n')
		if err != nil || line != "CONNECT 1027\n" {
			fmt.Fprintf(c, "ERR %q\n", line)
			return
		}
		// The reply and the first stream bytes in one write: Dial must not
		// swallow the stream bytes.
		io.WriteString(c, "OK 1073741830\nhello")
		io.Copy(io.Discard, c)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, port, err := Dial(ctx, "hvsock://"+path+":1027")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if port != 1073741830 {
		t.Fatalf("port %d", port)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("stream bytes %q, %v", buf, err)
	}
}

func TestDialHybridBadReply(t *testing.T) {
	for _, reply := range []string{"NO\n", "OK\n", "OK 0\n", "OK x\n", strings.Repeat("O", MaxReplyLine+1), ""} {
		path := fakeDevice(t, func(c *net.UnixConn) {
			bufio.NewReader(c).ReadString('\n')
			io.WriteString(c, reply)
		})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _, err := Dial(ctx, "hvsock://"+path+":1027")
		cancel()
		if !errors.Is(err, ErrHandshake) {
			t.Errorf("reply %q: err %v, want ErrHandshake", reply, err)
		}
	}
}

func TestDialRejectsUnix(t *testing.T) {
	if _, _, err := Dial(context.Background(), "unix:///tmp/x"); err == nil {
		t.Fatal("unix address accepted")
	}
	if _, _, err := Dial(context.Background(), "bogus"); err == nil {
		t.Fatal("bad address accepted")
	}
}

func TestPassFD(t *testing.T) {
	got := make(chan string, 1)
	path := fakeDevice(t, func(c *net.UnixConn) {
		r := bufio.NewReader(io.LimitReader(c, 7))
		if l, _ := r.ReadString('\n'); l != "passfd\n" {
			got <- "bad hello " + l
			return
		}
		buf := make([]byte, 64)
		oob := make([]byte, unix.CmsgSpace(4))
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil {
			got <- err.Error()
			return
		}
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		fds, err := unix.ParseUnixRights(&msgs[0])
		if err != nil || len(fds) != 1 {
			got <- "no fd"
			return
		}
		f := os.NewFile(uintptr(fds[0]), "passed")
		f.WriteString("via vmm") // the VMM relays the FIFO; prove it is ours
		f.Close()
		got <- string(buf[:n])
		io.WriteString(c, "OK 4242\n")
	})
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	port, err := PassFD(ctx, path, DefaultPort, w, true)
	w.Close()
	if err != nil || port != 4242 {
		t.Fatalf("port %d, %v", port, err)
	}
	if m := <-got; m != "1027 keep" {
		t.Fatalf("device got %q", m)
	}
	b, _ := io.ReadAll(r)
	if string(b) != "via vmm" {
		t.Fatalf("pipe got %q", b)
	}
}

func TestParseReply(t *testing.T) {
	for line, want := range map[string]uint32{"OK 1": 1, "OK 4294967295": 1<<32 - 1, " OK  77 ": 77} {
		if p, err := ParseReply(line); err != nil || p != want {
			t.Errorf("%q: %d, %v", line, p, err)
		}
	}
	for _, line := range []string{"", "OK", "OK 0", "OK -1", "OK 4294967296", "ok 1", "OK 1 2", "ERR 1"} {
		if _, err := ParseReply(line); !errors.Is(err, ErrHandshake) {
			t.Errorf("%q accepted: %v", line, err)
		}
	}
}

func FuzzParseReply(f *testing.F) {
	for _, s := range []string{"OK 1", "OK 0", "OK", "", "OK 99999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		p, err := ParseReply(line)
		if err == nil && (p == 0 || !strings.Contains(line, "OK")) {
			t.Fatalf("%q gave port %d", line, p)
		}
	})
}

func TestLocalPortRejectsNonVsock(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := LocalPort(a); err == nil {
		t.Fatal("pipe accepted as vsock")
	}
}
