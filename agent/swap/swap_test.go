package swap

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/loopdev"
)

// inSwaps reports whether /proc/swaps lists path.
func inSwaps(t *testing.T, path string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/swaps")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		if f := strings.Fields(line); len(f) > 0 && f[0] == path {
			return true
		}
	}
	return false
}

func swapoffAtEnd(t *testing.T, path string) {
	t.Cleanup(func() {
		if inSwaps(t, path) {
			if out, err := exec.Command("swapoff", path).CombinedOutput(); err != nil {
				t.Errorf("swapoff %s: %v: %s", path, err, out)
			}
		}
	})
}

// TestAddSwapPathBlockDevice: a mkswap'd loop device becomes swap
// (/proc/swaps), a second AddSwapPath is AlreadyExists.
func TestAddSwapPathBlockDevice(t *testing.T) {
	dev := loopdev.Attach(t, loopdev.File(t, 16<<20))
	loopdev.Run(t, "mkswap", dev)
	swapoffAtEnd(t, dev)
	h := &Handler{}
	if _, err := h.AddSwapPath(context.Background(), &pb.AddSwapPathRequest{Path: dev}); err != nil {
		t.Fatal(err)
	}
	if !inSwaps(t, dev) {
		t.Fatalf("%s not in /proc/swaps", dev)
	}
	_, err := h.AddSwapPath(context.Background(), &pb.AddSwapPathRequest{Path: dev})
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("second swapon: %v", err)
	}
}

// TestAddSwapPathFile: a swap file on ext4 becomes swap.
func TestAddSwapPathFile(t *testing.T) {
	dev := loopdev.Attach(t, loopdev.File(t, 64<<20))
	loopdev.Run(t, "mkfs.ext4", "-q", "-F", dev)
	dir := t.TempDir()
	if err := unix.Mount(dev, dir, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, 0) })
	file := filepath.Join(dir, "swapfile")
	if err := os.WriteFile(file, make([]byte, 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	loopdev.Run(t, "mkswap", file)
	swapoffAtEnd(t, file)
	if _, err := (&Handler{}).AddSwapPath(context.Background(), &pb.AddSwapPathRequest{Path: file}); err != nil {
		t.Fatal(err)
	}
	if !inSwaps(t, file) {
		t.Fatalf("%s not in /proc/swaps", file)
	}
}

func TestAddSwapPathBadInput(t *testing.T) {
	if why := loopdev.Available(); why != "" {
		t.Skip(why)
	}
	dir := t.TempDir()
	unformatted := filepath.Join(dir, "plain")
	if err := os.WriteFile(unformatted, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(unformatted, link); err != nil {
		t.Fatal(err)
	}
	for path, code := range map[string]codes.Code{
		"":             codes.InvalidArgument,
		"swapfile":     codes.InvalidArgument,
		"/a/../b":      codes.InvalidArgument,
		"/no/such":     codes.NotFound,
		dir:            codes.InvalidArgument, // a directory
		"/dev/null":    codes.InvalidArgument, // a char device
		link:           codes.InvalidArgument, // symlinks are not followed
		unformatted:    codes.InvalidArgument, // no swap signature
		"/tmp/\x00bad": codes.InvalidArgument,
	} {
		_, err := (&Handler{}).AddSwapPath(context.Background(), &pb.AddSwapPathRequest{Path: path})
		if status.Code(err) != code || !strings.Contains(err.Error(), "path") {
			t.Errorf("%q: %v, want %v naming path", path, err, code)
		}
	}
}

type fakeFinder struct {
	got string
	dev string
	err error
}

func (f *fakeFinder) PCIBlock(_ context.Context, p string) (string, error) {
	f.got = p
	return f.dev, f.err
}

// TestAddSwapResolvesPCIPath: AddSwap asks for the PCI path in Kata's form
// and swaps on what it resolves to; resolution errors keep their class.
func TestAddSwapResolvesPCIPath(t *testing.T) {
	dev := loopdev.Attach(t, loopdev.File(t, 16<<20))
	loopdev.Run(t, "mkswap", dev)
	swapoffAtEnd(t, dev)
	f := &fakeFinder{dev: dev}
	h := &PCIHandler{Blocks: f}
	if _, err := h.AddSwap(context.Background(), &pb.AddSwapRequest{PCIPath: []uint32{2, 0x1f}}); err != nil {
		t.Fatal(err)
	}
	if f.got != "02/1f" || !inSwaps(t, dev) {
		t.Errorf("resolved %q; in /proc/swaps: %v", f.got, inSwaps(t, dev))
	}
	for _, c := range []struct {
		req  *pb.AddSwapRequest
		err  error
		code codes.Code
	}{
		{&pb.AddSwapRequest{}, nil, codes.InvalidArgument},
		{&pb.AddSwapRequest{PCIPath: []uint32{2, 32}}, nil, codes.InvalidArgument},
		{&pb.AddSwapRequest{PCIPath: []uint32{5}}, context.DeadlineExceeded, codes.DeadlineExceeded},
		{&pb.AddSwapRequest{PCIPath: []uint32{5}}, errors.New("boom"), codes.Internal},
	} {
		f.err = c.err
		_, err := h.AddSwap(context.Background(), c.req)
		if status.Code(err) != c.code || !strings.Contains(err.Error(), "PCIPath") {
			t.Errorf("%v: %v, want %v naming PCIPath", c.req.PCIPath, err, c.code)
		}
	}
	_, err := (&PCIHandler{}).AddSwap(context.Background(), &pb.AddSwapRequest{PCIPath: []uint32{2}})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("no finder: %v", err)
	}
}
