package qemu

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keelvm/keel/rootfs-builder/cpio"
	"github.com/keelvm/keel/tests/vmm/guestkernel"
)

// shared is per-test-binary state: the kernel and the compiled test /init.
var shared struct {
	dir string // removed by TestMain

	once    sync.Once
	kernel  *guestkernel.Kernel
	vmlinux string // PVH-bootable ELF: no in-guest XZ decompression
	initBin string
	err     error
}

func TestMain(m *testing.M) {
	if k := os.Getenv(childEnv); k != "" {
		pdeathsigChild(k) // never returns
	}
	d, err := os.MkdirTemp("", "keel-qemu-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	shared.dir = d
	code := m.Run()
	os.RemoveAll(d)
	// Every test must reap its QEMU; a leftover child is a bug in Close.
	if left := qemuChildren(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: qemu processes left behind: %v\n", left)
		for _, pid := range left {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		code = 1
	}
	os.Exit(code)
}

// qemuChildren lists child processes of this test binary running QEMU.
func qemuChildren() []int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var pids []int
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		s := string(b)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open {
			continue
		}
		comm := s[open+1 : end]
		f := strings.Fields(s[end+1:])
		if len(f) < 2 || !strings.HasPrefix(comm, "qemu") {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid == os.Getpid() {
			pid, _ := strconv.Atoi(strings.TrimSpace(s[:open]))
			pids = append(pids, pid)
		}
	}
	return pids
}

// testGuest is what a VM test boots.
type testGuest struct {
	*guestkernel.Kernel
	// Image is the kernel to pass as Config.Kernel: Debian's kernel as an
	// uncompressed ELF (booted via PVH, ~2x faster under TCG than the
	// XZ bzImage).
	Image string
	// Init is the static test /init binary.
	Init string
}

// guest returns the Debian kernel and the static test /init, skipping the
// test when QEMU is missing.
func guest(t *testing.T) testGuest {
	t.Helper()
	if !Available() {
		t.Skip("qemu-system-x86_64 not installed")
	}
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if shared.kernel, shared.err = guestkernel.Ensure(ctx); shared.err != nil {
			return
		}
		if shared.vmlinux, shared.err = shared.kernel.VmlinuxPath(ctx); shared.err != nil {
			return
		}
		shared.initBin, shared.err = buildInit(ctx, shared.dir)
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return testGuest{shared.kernel, shared.vmlinux, shared.initBin}
}

// buildInit compiles testdata/guestinit as a static binary.
func buildInit(ctx context.Context, dir string) (string, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		// `go test` may run with a PATH lacking go; it exports GOROOT.
		gobin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		if _, serr := os.Stat(gobin); os.Getenv("GOROOT") == "" || serr != nil {
			return "", fmt.Errorf("go toolchain not found: %w", err)
		}
	}
	out := filepath.Join(dir, "init")
	cmd := exec.CommandContext(ctx, gobin, "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./testdata/guestinit")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building test init: %w: %s", err, stderr.String())
	}
	return out, nil
}

// initramfs writes an uncompressed newc archive with the test /init, a
// console node and extra entries, and returns its path.
func initramfs(t *testing.T, initBin string, extra ...cpio.Entry) string {
	t.Helper()
	entries := append([]cpio.Entry{
		cpio.File("init", initBin, 0o755),
		cpio.Dir("dev", 0o755),
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.Dir("proc", 0o755),
		cpio.Dir("sys", 0o755),
	}, extra...)
	p := filepath.Join(t.TempDir(), "initrd.cpio")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := cpio.WriteEntries(f, entries, cpio.Options{}); err != nil {
		t.Fatal(err)
	}
	return p
}

// launch starts a VM and registers Close with the test.
func launch(t *testing.T, cfg Config) *VM {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vm, err := Launch(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := vm.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if t.Failed() {
			t.Logf("serial console:\n%s", vm.SerialLog())
		}
	})
	return vm
}

// processGone reports whether pid no longer exists (reaped, not a zombie).
func processGone(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return os.IsNotExist(err)
}

const cmdline = "console=ttyS0 panic=-1 quiet keeltest.mode="
