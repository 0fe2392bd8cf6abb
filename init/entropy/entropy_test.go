package entropy

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPoolInfo(t *testing.T) {
	b := poolInfo([]byte{1, 2, 3})
	if binary.NativeEndian.Uint32(b[0:]) != 24 || binary.NativeEndian.Uint32(b[4:]) != 3 || b[8] != 1 || b[10] != 3 {
		t.Fatalf("% x", b)
	}
}

func TestSeed(t *testing.T) {
	if err := Seed(nil); err != nil {
		t.Fatal(err)
	}
	if err := Seed(make([]byte, MaxSeed+1)); err == nil {
		t.Fatal("oversized seed accepted")
	}
	if os.Geteuid() != 0 {
		t.Skip("crediting entropy needs root")
	}
	if err := Seed([]byte("keel test seed, not secret")); err != nil {
		t.Fatal(err)
	}
}

func TestSeedNonDevice(t *testing.T) {
	old := RandomDev
	defer func() { RandomDev = old }()
	RandomDev = filepath.Join(t.TempDir(), "urandom")
	os.WriteFile(RandomDev, nil, 0o644)
	err := Seed([]byte{1, 2})
	if err == nil || !strings.Contains(err.Error(), "not credited") {
		t.Fatalf("Seed to a plain file = %v", err)
	}
}

func TestFromHWRNG(t *testing.T) {
	n, err := FromHWRNG(filepath.Join(t.TempDir(), "none"), time.Second)
	if n != 0 || err != nil {
		t.Fatalf("missing device: %d %v", n, err)
	}
	// A FIFO with no writer never delivers: the deadline must hold.
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := mkfifo(fifo); err != nil {
		t.Skip(err)
	}
	start := time.Now()
	n, err = FromHWRNG(fifo, 100*time.Millisecond)
	if n != 0 || err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("slow device: %d %v after %v", n, err, time.Since(start))
	}
	// /dev/urandom stands in for a fast hwrng.
	if os.Geteuid() == 0 {
		if n, err := FromHWRNG("/dev/urandom", time.Second); n != HWRNGBytes || err != nil {
			t.Fatalf("urandom as hwrng: %d %v", n, err)
		}
	}
}

func TestRead(t *testing.T) {
	b := make([]byte, 32)
	if err := Read(b); err != nil {
		t.Fatal(err)
	}
	if Available() == "?" {
		t.Error("entropy_avail unreadable")
	}
}
