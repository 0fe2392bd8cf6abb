package qemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keelvm/keel/tests/vmm/qmp"
)

func TestBootMarkerAndPowerOff(t *testing.T) {
	g := guest(t)
	vm := launch(t, Config{
		Kernel: g.Image,
		Initrd: initramfs(t, g.Init),
		Append: cmdline + "poweroff",
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := vm.WaitSerial(ctx, "KEEL-TEST-MARKER"); err != nil {
		t.Fatal(err)
	}
	boot := time.Since(vm.Started())
	if err := vm.Wait(); err != nil {
		t.Fatalf("qemu did not exit cleanly after guest power-off: %v", err)
	}
	// Exit status 0 alone could also be a panic (panic=-1 + -no-reboot);
	// QMP's SHUTDOWN event tells them apart.
	if r := vm.ShutdownReason(); r != "guest-shutdown" {
		t.Errorf("shutdown reason %q, want guest-shutdown", r)
	}
	sawShutdown := false
	for ev := range vm.QMP().Events() {
		sawShutdown = sawShutdown || ev.Name == "SHUTDOWN"
	}
	if !sawShutdown {
		t.Error("no SHUTDOWN event on the default QMP subscription")
	}
	m := regexp.MustCompile(`KEEL-TEST-MARKER mode=poweroff uptime=([0-9.]+)`).FindStringSubmatch(vm.SerialLog())
	if m == nil {
		t.Fatalf("marker line malformed:\n%s", vm.SerialLog())
	}
	t.Logf("kernel %s: marker %.2fs after QEMU start (guest uptime %ss), exit after %.2fs",
		g.Version, boot.Seconds(), m[1], time.Since(vm.Started()).Seconds())
}

func TestQMPStatusAndCloseCleansUp(t *testing.T) {
	g := guest(t)
	vm, err := Launch(context.Background(), Config{
		Kernel: g.Image,
		Initrd: initramfs(t, g.Init),
		Append: cmdline + "sleep",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := vm.QMP().QueryStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != "running" || !st.Running {
		t.Fatalf("status %+v", st)
	}
	buses, err := vm.QMP().QueryPCI(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(buses) == 0 || len(buses[0].Devices) == 0 {
		t.Fatalf("query-pci: no devices on q35: %+v", buses)
	}

	pid, dir := vm.Pid(), vm.Dir()
	sock := filepath.Join(dir, "qmp.sock")
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("qmp socket missing while running: %v", err)
	}
	start := time.Now()
	if err := vm.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Close took %v", time.Since(start))
	if !processGone(pid) {
		t.Fatalf("qemu pid %d still exists after Close", pid)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("VM dir %s not removed: %v", dir, err)
	}
	if err := vm.Wait(); err != nil {
		t.Fatalf("QMP quit should exit 0: %v", err)
	}
	if r := vm.ShutdownReason(); r != "host-qmp-quit" {
		t.Errorf("shutdown reason %q, want host-qmp-quit", r)
	}
	if err := vm.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := vm.QMP().QueryStatus(ctx); err == nil {
		t.Fatal("QMP still answers after Close")
	}
}

func TestSIGKILLDetectedByWait(t *testing.T) {
	g := guest(t)
	dir := filepath.Join(t.TempDir(), "vm")
	vm := launch(t, Config{
		Kernel: g.Image,
		Initrd: initramfs(t, g.Init),
		Append: cmdline + "sleep",
		Dir:    dir,
	})
	// Simulate QEMU crashing: kill it behind the VM's back.
	if err := syscall.Kill(vm.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := vm.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("Wait = %v, want an *exec.ExitError", err)
	}
	ws := ee.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("wait status %v, want killed by SIGKILL", ws)
	}
	if r := vm.ShutdownReason(); r != "" {
		t.Errorf("killed QEMU has shutdown reason %q", r)
	}
	if err := vm.Close(); err != nil {
		t.Fatal(err)
	}
	// A caller-provided Dir is kept, but the socket QEMU left is removed.
	if _, err := os.Stat(filepath.Join(dir, "qmp.sock")); !os.IsNotExist(err) {
		t.Fatalf("stale qmp.sock after Close: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "qemu.log")); err != nil {
		t.Fatalf("given Dir was not kept: %v", err)
	}
}

func TestLaunchFailureLeavesNothing(t *testing.T) {
	g := guest(t)
	dir := filepath.Join(t.TempDir(), "vm")
	_, err := Launch(context.Background(), Config{
		Kernel:    g.Image,
		Dir:       dir,
		ExtraArgs: []string{"-device", "no-such-device-keel"},
	})
	if err == nil {
		t.Fatal("Launch with a bogus device succeeded")
	}
	if !strings.Contains(err.Error(), "no-such-device-keel") {
		t.Fatalf("error does not quote QEMU's complaint: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "qmp.sock")); !os.IsNotExist(err) {
		t.Fatalf("qmp.sock left behind: %v", err)
	}
}

// childEnv makes the test binary act as a short-lived VM owner for
// TestPdeathsigKillsQEMU.
const childEnv = "KEEL_QEMU_TEST_CHILD"

// pdeathsigChild is the test binary's whole life in that role (dispatched
// from TestMain, so it is not a test that would show as skipped).
func pdeathsigChild(kernel string) {
	vm, err := Launch(context.Background(), Config{Kernel: kernel, Append: "panic=-1"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "launch:", err)
		os.Exit(1)
	}
	fmt.Printf("QEMU-PID %d %s\n", vm.Pid(), vm.Dir())
	time.Sleep(time.Minute) // the parent kills us long before this
	os.Exit(1)
}

func TestPdeathsigKillsQEMU(t *testing.T) {
	g := guest(t)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), childEnv+"="+g.VmlinuzPath)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var pid int
	var dir string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "QEMU-PID" {
			pid, _ = strconv.Atoi(f[1])
			dir = f[2]
			break
		}
	}
	if pid == 0 {
		t.Fatal("child did not report a QEMU pid")
	}
	// The crashed owner cannot clean its temp dir; we do.
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	// QEMU is reparented (to init or a subreaper) once killed; we cannot
	// reap it, so wait for the pid to disappear or become a zombie.
	deadline := time.Now().Add(10 * time.Second)
	for !processGone(pid) && !isZombie(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("qemu %d survived its parent's death", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] == 'Z'
}

func TestLaunchWithoutVsockBackendFails(t *testing.T) {
	g := guest(t)
	sock := filepath.Join(t.TempDir(), "no-backend.sock")
	_, err := Launch(context.Background(), Config{Kernel: g.Image, VhostUserVsockSocket: sock})
	if err == nil {
		t.Fatal("Launch succeeded without a vhost-user backend listening")
	}
	if !strings.Contains(err.Error(), sock) {
		t.Fatalf("error does not name the socket: %v", err)
	}
}

func TestHotplugOnRootPort(t *testing.T) {
	g := guest(t)
	vm := launch(t, Config{
		Kernel:        g.Image,
		Initrd:        initramfs(t, g.Init),
		Append:        cmdline + "sleep",
		PCIeRootPorts: 2,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := vm.QMP()
	if err := c.DeviceAdd(ctx, "virtio-rng-pci", "rng-hot", map[string]any{"bus": PCIeRootPortID(1)}); err != nil {
		t.Fatal(err)
	}
	// query-pci lists devices behind a bridge only once firmware has given
	// the bridge a bus number, so poll.
	var d qmp.PCIDevice
	for {
		buses, err := c.QueryPCI(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ok bool
		if d, ok = qmp.FindPCIDevice(buses, "rng-hot"); ok {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("hot-plugged device never showed in query-pci: %+v", buses)
		case <-time.After(100 * time.Millisecond):
		}
	}
	if d.ID.Vendor != 0x1af4 || d.Bus == 0 {
		t.Fatalf("device %+v: want a virtio (0x1af4) function behind a root port", d)
	}
	// The same id twice must be refused with QEMU's error, not hang.
	if err := c.DeviceAdd(ctx, "virtio-rng-pci", "rng-hot", map[string]any{"bus": PCIeRootPortID(0)}); err == nil {
		t.Fatal("duplicate device id accepted")
	}
}

func TestSweepStaleDirs(t *testing.T) {
	// A dead owner: a child process that has exited and been reaped.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := filepath.Join(os.TempDir(), fmt.Sprintf("%s%d-1", tempPrefix, cmd.Process.Pid))
	alive := filepath.Join(os.TempDir(), fmt.Sprintf("%s%d-2", tempPrefix, os.Getppid()))
	foreign := filepath.Join(os.TempDir(), tempPrefix+"notapid-3")
	for _, d := range []string{dead, alive, foreign} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
	}
	if !processGone(cmd.Process.Pid) {
		t.Skip("pid of the exited child was reused")
	}
	sweepStaleDirs()
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("dir of dead owner kept: %v", err)
	}
	for _, d := range []string{alive, foreign} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s removed: %v", d, err)
		}
	}
}
