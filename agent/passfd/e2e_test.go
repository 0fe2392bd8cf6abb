package passfd_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/keelvm/keel/agent/passfd"
	"github.com/keelvm/keel/agent/stdio"
)

// The whole agent side of the fast path: the host opens a stdin and a
// stdout connection, the agent claims them by port and attaches them to a
// process (cat), and 16 MiB come back intact.
func TestFastPathEndToEnd(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "passfd")
	nl, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	// Unix sockets have no ports: the test host sends its port first.
	portOf := func(c net.Conn) (uint32, error) {
		var b [4]byte
		_, err := io.ReadFull(c, b[:])
		return binary.BigEndian.Uint32(b[:]), err
	}
	l := passfd.NewListener(nl, portOf)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go l.Serve(ctx)

	dial := func(port uint32) *net.UnixConn {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		binary.Write(c, binary.BigEndian, port)
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	hostIn, hostOut := dial(2001), dial(2002)

	s, err := stdio.New(stdio.Options{Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cmd := exec.Command("cat")
	in, out, errf := s.ChildFiles()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = in, out, errf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.CloseChildSide()
	defer func() { cmd.Process.Kill(); cmd.Wait() }()

	for port, attach := range map[uint32]func(net.Conn) error{2001: s.AttachStdin, 2002: s.AttachStdout} {
		c, err := l.Take(port, passfd.TakeTimeout)
		if err != nil {
			t.Fatal(err)
		}
		if err := attach(c); err != nil {
			t.Fatal(err)
		}
	}
	data := make([]byte, 16<<20)
	rand.NewChaCha8([32]byte{9}).Read(data)
	go func() {
		hostIn.Write(data)
		hostIn.CloseWrite()
	}()
	hostOut.SetReadDeadline(time.Now().Add(time.Minute))
	got, err := io.ReadAll(hostOut)
	if err != nil || sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("got %d of %d bytes, %v", len(got), len(data), err)
	}
}
