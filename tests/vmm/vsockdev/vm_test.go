package vsockdev_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/rootfs-builder/cpio"
	"github.com/keelvm/keel/tests/vmm/guestkernel"
	"github.com/keelvm/keel/tests/vmm/qemu"
	"github.com/keelvm/keel/tests/vmm/vsockdev"
)

// throughputBytes is moved in each direction for the throughput figures.
const throughputBytes = 16 << 20

// TestVMSmoke boots Debian's kernel under QEMU TCG with a tiny Go /init
// (testdata/vsockinit) and checks real guest AF_VSOCK through the device:
// host→guest echo via CONNECT, a refused port, a guest→host connection to
// <uds>_1025, throughput both ways, and a guest reboot.
func TestVMSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	if !qemu.Available() {
		t.Skip("qemu-system-x86_64 is not installed")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	k, err := guestkernel.Ensure(ctx)
	if err != nil {
		t.Fatalf("unable to get the guest kernel: %v", err)
	}
	dir := t.TempDir()
	initrd := buildInitrd(ctx, t, k, dir)

	logf, err := os.Create(filepath.Join(dir, "device.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	uds := filepath.Join(dir, "vsock")
	dev, err := vsockdev.Start(ctx, vsockdev.Config{
		VhostUserSocket: filepath.Join(dir, "vhost.sock"),
		UDSPath:         uds,
		Log:             slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	guestLn, err := net.Listen("unix", uds+"_1025")
	if err != nil {
		t.Fatal(err)
	}
	defer guestLn.Close()

	start := time.Now()
	vm, err := qemu.Launch(ctx, qemu.Config{
		Kernel:               k.VmlinuzPath,
		Initrd:               initrd,
		Append:               "console=ttyS0 panic=-1 quiet",
		VhostUserVsockSocket: filepath.Join(dir, "vhost.sock"),
		Dir:                  filepath.Join(dir, "vm"),
		// The launcher passes -no-reboot; let system_reset really reset.
		ExtraArgs: []string{"-action", "reboot=reset"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			q, _ := os.ReadFile(filepath.Join(dir, "vm", "qemu.log"))
			t.Logf("console:\n%s\nqemu log:\n%s\ndevice log tail:\n%s", vm.SerialLog(), q, tailLines(string(b), 40))
		}
	}()
	waitSerial(ctx, t, vm, "VSOCKINIT READY")
	t.Logf("guest listening %.1fs after QEMU start", time.Since(start).Seconds())

	// Guest → host: the guest dials CID 2 port 1025.
	guestLn.(*net.UnixListener).SetDeadline(time.Now().Add(30 * time.Second))
	hc, err := guestLn.Accept()
	if err != nil {
		t.Fatalf("guest did not connect to %s_1025: %v", uds, err)
	}
	line, err := bufio.NewReader(hc).ReadString('\n')
	if err != nil || line != "hello from guest\n" {
		t.Fatalf("host got %q %v", line, err)
	}
	fmt.Fprint(hc, "hi guest\n")
	waitSerial(ctx, t, vm, "GUEST GOT hi guest")
	hc.Close()

	// Host → guest echo.
	c, r := connect(t, uds, 1024)
	fmt.Fprint(c, "ping\n")
	if got, err := r.ReadString('\n'); err != nil || got != "ping\n" {
		t.Fatalf("echo %q %v", got, err)
	}
	c.Close()

	// Nothing listens on 1099: closed without OK.
	rc, err := net.Dial("unix", uds)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(rc, "CONNECT 1099\n")
	rc.SetReadDeadline(time.Now().Add(30 * time.Second))
	if b, err := io.ReadAll(rc); err != nil || len(b) != 0 {
		t.Fatalf("refused port answered %q %v", b, err)
	}
	rc.Close()

	// Throughput host → guest (sink counts bytes).
	c, r = connect(t, uds, 1026)
	payload := bytes.Repeat([]byte("0123456789abcdef"), throughputBytes/16)
	t0 := time.Now()
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	c.(*net.UnixConn).CloseWrite()
	got, err := r.ReadString('\n')
	el := time.Since(t0)
	if err != nil || strings.TrimSpace(got) != strconv.Itoa(throughputBytes) {
		t.Fatalf("sink counted %q %v", got, err)
	}
	c.Close()
	t.Logf("host→guest: %d MiB in %v = %.1f MB/s", throughputBytes>>20, el.Round(time.Millisecond), float64(throughputBytes)/el.Seconds()/1e6)

	// Throughput guest → host (source writes a known pattern).
	c, r = connect(t, uds, 1027)
	t0 = time.Now()
	fmt.Fprintf(c, "%d\n", throughputBytes)
	data, err := io.ReadAll(r)
	el = time.Since(t0)
	if err != nil || len(data) != throughputBytes {
		t.Fatalf("source gave %d bytes, %v", len(data), err)
	}
	for i, b := range data {
		if b != byte(i%(64<<10)) {
			t.Fatalf("guest→host stream corrupted at byte %d", i)
		}
	}
	c.Close()
	t.Logf("guest→host: %d MiB in %v = %.1f MB/s", throughputBytes>>20, el.Round(time.Millisecond), float64(throughputBytes)/el.Seconds()/1e6)

	// Echo both ways at once: order and content preserved under load.
	c, r = connect(t, uds, 1024)
	echo := payload[:4<<20]
	go func() { c.Write(echo) }()
	back := make([]byte, len(echo))
	t0 = time.Now()
	if _, err := io.ReadFull(r, back); err != nil || !bytes.Equal(back, echo) {
		t.Fatalf("echo of 4 MiB: %v, equal %v", err, bytes.Equal(back, echo))
	}
	t.Logf("echo: 4 MiB round trip in %v", time.Since(t0).Round(time.Millisecond))
	c.Close()

	// Guest reboot: QEMU stops the rings (GET_VRING_BASE), the device
	// resets, and the new kernel's driver starts them again.
	if err := vm.QMP().Execute(ctx, "system_reset", nil, nil); err != nil {
		t.Fatal(err)
	}
	for strings.Count(vm.SerialLog(), "VSOCKINIT READY") < 2 {
		select {
		case <-vm.Done():
			t.Fatalf("qemu exited after system_reset: %v", vm.Wait())
		case <-ctx.Done():
			t.Fatalf("guest did not come back after reset: %v", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		if strings.Contains(vm.SerialLog(), "VSOCKINIT FAILED") {
			t.Fatal("guest init failed after reset")
		}
	}
	c, r = connect(t, uds, 1024)
	fmt.Fprint(c, "after reboot\n")
	if got, err := r.ReadString('\n'); err != nil || got != "after reboot\n" {
		t.Fatalf("echo after reboot %q %v", got, err)
	}
	c.Close()
	t.Logf("device stats: %+v", dev.Stats())
}

// waitSerial waits for want on the console, failing fast when the guest
// init reports a failure.
func waitSerial(ctx context.Context, t *testing.T, vm *qemu.VM, want string) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	failed := make(chan struct{})
	go func() {
		if vm.WaitSerial(ctx, "VSOCKINIT FAILED") == nil {
			close(failed)
			cancel()
		}
	}()
	if err := vm.WaitSerial(ctx, want); err != nil {
		select {
		case <-failed:
			t.Fatalf("guest init failed:\n%s", vm.SerialLog())
		default:
		}
		t.Fatal(err)
	}
}

// connect does the hybrid-vsock handshake, retrying while the guest
// refuses (the listener may not be up yet).
func connect(t *testing.T, uds string, port int) (net.Conn, *bufio.Reader) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("unix", uds)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "CONNECT %d\n", port)
		r := bufio.NewReader(c)
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		line, err := r.ReadString('\n')
		c.SetReadDeadline(time.Time{})
		if err == nil && strings.HasPrefix(line, "OK ") {
			return c, r
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("CONNECT %d: %q %v", port, line, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// buildInitrd builds testdata/vsockinit statically and packs it as /init
// with the vsock modules and their load order in /modules.list.
func buildInitrd(ctx context.Context, t *testing.T, k *guestkernel.Kernel, dir string) string {
	t.Helper()
	initBin := filepath.Join(dir, "init")
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = "/usr/local/go/bin/go"
	}
	cmd := exec.CommandContext(ctx, gobin, "build", "-trimpath", "-o", initBin, "./testdata/vsockinit")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("unable to build the guest init: %v\n%s", err, out)
	}
	mods, err := k.ModulesFor("virtio_pci", "vmw_vsock_virtio_transport")
	if err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(dir, "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	paths, err := k.InstallModules(ctx, tree, mods)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := cpio.TreeEntries(tree)
	if err != nil {
		t.Fatal(err)
	}
	entries = append(entries,
		cpio.File("init", initBin, 0o755),
		cpio.Bytes("modules.list", []byte(strings.Join(paths, "\n")+"\n"), 0o644),
		cpio.Dir("dev", 0o755),
		cpio.CharDev("dev/console", 0o600, 5, 1),
	)
	out := filepath.Join(dir, "initrd.cpio")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := cpio.WriteEntries(f, entries, cpio.Options{}); err != nil {
		t.Fatal(err)
	}
	return out
}

func tailLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
