package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keelvm/keel/protocol/addr"
)

// fakeVMM plays a hybrid-vsock device: it reads "CONNECT PORT\n" and answers
// with reply(port); when reply returns "" it hangs up instead.
type fakeVMM struct {
	ln      net.Listener
	reply   func(port string) string
	mu      sync.Mutex
	asked   []string
	payload string // written right after the OK line, in the same write
	wg      sync.WaitGroup
}

func startFakeVMM(t *testing.T, path string, reply func(string) string) *fakeVMM {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	v := &fakeVMM{ln: ln, reply: reply}
	v.wg.Add(1)
	go v.serve()
	t.Cleanup(func() { ln.Close(); v.wg.Wait() })
	return v
}

func (v *fakeVMM) serve() {
	defer v.wg.Done()
	for {
		c, err := v.ln.Accept()
		if err != nil {
			return
		}
		v.wg.Add(1)
		go func() {
			defer v.wg.Done()
			defer c.Close()
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return
			}
			port, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "CONNECT ")
			v.mu.Lock()
			v.asked = append(v.asked, port)
			v.mu.Unlock()
			if !ok {
				return
			}
			r := v.reply(port)
			if r == "" {
				return
			}
			io.WriteString(c, r+v.payload)
			io.Copy(c, c) // echo until the client hangs up
		}()
	}
}

func (v *fakeVMM) attempts() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.asked)
}

func TestHybridHandshakeOK(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "v.sock")
	v := startFakeVMM(t, sock, func(p string) string { return "OK 1073741824\n" })
	v.payload = "guest-bytes"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := DialConn(ctx, "hvsock://"+sock+":1024")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Bytes the device sent right behind "OK ...\n" belong to the stream.
	buf := make([]byte, len("guest-bytes"))
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "guest-bytes" {
		t.Fatalf("stream after OK: %q, %v", buf, err)
	}
	io.WriteString(conn, "ping")
	buf = make([]byte, 4)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q, %v", buf, err)
	}
	if v.asked[0] != "1024" {
		t.Fatalf("device was asked for port %q, want 1024", v.asked[0])
	}
}

func TestHybridWrongReplyIsRetriedThenFails(t *testing.T) {
	for _, reply := range []string{"NOPE\n", "", "OK-ish but no newline and far too long " + strings.Repeat("x", 200)} {
		sock := filepath.Join(t.TempDir(), "v.sock")
		v := startFakeVMM(t, sock, func(string) string { return reply })
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err := DialConn(ctx, "hvsock://"+sock+":1024")
		cancel()
		var de *DialError
		if !errors.As(err, &de) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("reply %.10q: got %v, want a DialError ending in deadline", reply, err)
		}
		if !strings.Contains(err.Error(), sock) || !strings.Contains(err.Error(), "handshake") {
			t.Errorf("reply %.10q: error %q should name the address and the handshake", reply, err)
		}
		if de.Attempts < 2 || v.attempts() < 2 {
			t.Errorf("reply %.10q: %d attempts (device saw %d), want retries", reply, de.Attempts, v.attempts())
		}
	}
}

// The guest starts listening only after many refusals (1.5 s): with the
// backoff capped at MaxBackoff the dial succeeds about one step later and
// keeps trying meanwhile; uncapped doubling from FirstBackoff would be
// about a second late and try only ~9 times.
func TestHybridLateListener(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "v.sock")
	var mu sync.Mutex
	ready := time.Now().Add(1500 * time.Millisecond)
	v := startFakeVMM(t, sock, func(string) string {
		mu.Lock()
		defer mu.Unlock()
		if time.Now().Before(ready) {
			return "" // guest not listening yet: device hangs up (RST)
		}
		return "OK 5\n"
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := DialConn(ctx, "hvsock://"+sock+":1024")
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	// The bound catches the regression (a retry a whole second later) with
	// room for a loaded CI machine; the attempts show the cap (~18 in
	// 1.5 s at 100 ms, fewer than 10 if the waits kept doubling).
	if late := time.Since(ready); late > 700*time.Millisecond {
		t.Fatalf("connected %v after the listener appeared, want within 700 ms (about one backoff, %v, expected)", late, MaxBackoff)
	}
	if n := v.attempts(); n < 12 {
		t.Fatalf("%d attempts in 1.5 s: the backoff is not capped at %v", n, MaxBackoff)
	}
}

// The Unix socket itself appears late (VMM still starting).
func TestUnixLateSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "a.sock")
	go func() {
		time.Sleep(150 * time.Millisecond)
		ln, err := net.Listen("unix", sock)
		if err != nil {
			return
		}
		c, err := ln.Accept()
		if err == nil {
			io.WriteString(c, "hi")
			c.Close()
		}
		ln.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := DialConn(ctx, "unix://"+sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	b, _ := io.ReadAll(conn)
	if string(b) != "hi" {
		t.Fatalf("read %q", b)
	}
}

func TestPermanentErrorsReturnAtOnce(t *testing.T) {
	for _, a := range []string{"tcp://x:1", "unix://rel", "vsock://-1:1024", "vsock://3"} {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := DialConn(ctx, a)
		cancel()
		var de *DialError
		if !errors.As(err, &de) || de.Attempts > 1 {
			t.Errorf("%s: %v, want a DialError after at most one attempt", a, err)
		}
		if time.Since(start) > time.Second {
			t.Errorf("%s: took %v, want immediate failure", a, time.Since(start))
		}
		if !strings.Contains(err.Error(), a) {
			t.Errorf("%s: error %q does not name the address", a, err)
		}
	}
	_, err := DialConn(context.Background(), "bogus")
	if !errors.Is(err, addr.ErrInvalid) {
		t.Errorf("malformed address: %v, want addr.ErrInvalid", err)
	}
}

func TestReadLineLimits(t *testing.T) {
	for in, want := range map[string]string{
		"OK 1\nrest":                "OK 1",
		"":                          "closed",
		strings.Repeat("a", 500):    fmt.Sprintf("longer than %d", MaxHandshakeLine),
		"OK without newline at EOF": "closed",
	} {
		got, err := readLine(strings.NewReader(in))
		if err == nil && got != want || err != nil && !strings.Contains(err.Error(), want) {
			t.Errorf("readLine(%.12q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestDialHybridReportsHostPort(t *testing.T) {
	for reply, want := range map[string]uint32{"OK 1073741830\n": 1073741830, "OK\n": 0, "OK x\n": 0} {
		sock := filepath.Join(t.TempDir(), "v.sock")
		startFakeVMM(t, sock, func(string) string { return reply })
		c, port, err := DialHybrid(context.Background(), sock, 1027)
		if err != nil {
			t.Fatalf("reply %q: %v", reply, err)
		}
		c.Close()
		if port != want {
			t.Errorf("reply %q: host port %d, want %d", reply, port, want)
		}
	}
}
