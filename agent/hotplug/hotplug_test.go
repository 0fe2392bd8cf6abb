package hotplug

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/keelvm/keel/protocol/grpc"
)

func TestCountCPUList(t *testing.T) {
	for in, want := range map[string]int{"": 0, "0": 1, "0-3": 4, "0-3,5,7-8": 7, "1,3": 2} {
		if n, err := CountCPUList(in); err != nil || n != want {
			t.Errorf("CountCPUList(%q) = %d, %v; want %d", in, n, err, want)
		}
	}
	for _, bad := range []string{"a", "3-1", "-1", "1,", "0-"} {
		if _, err := CountCPUList(bad); err == nil {
			t.Errorf("CountCPUList(%q) accepted", bad)
		}
	}
}

func write(t *testing.T, p, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// fakeKernel plays the kernel's part in a fake sysfs tree: it keeps
// cpu/online equal to the CPUs whose online file says 1 (cpu0 always).
//
// It runs until the test ends: the cleanup stops it and waits for it to
// return, so no write lands in root while the test's TempDir is removed
// (a late write failed the removal with "directory not empty").
func fakeKernel(t *testing.T, root string, ncpu int) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		<-done
	})
	go func() {
		defer close(done)
		runFakeKernel(ctx, root, ncpu)
	}()
}

func runFakeKernel(ctx context.Context, root string, ncpu int) {
	for ctx.Err() == nil {
		list := []string{"0"}
		for i := 1; i < ncpu; i++ {
			if b, err := os.ReadFile(filepath.Join(root, fmt.Sprintf("devices/system/cpu/cpu%d/online", i))); err == nil && strings.TrimSpace(string(b)) == "1" {
				list = append(list, fmt.Sprint(i))
			}
		}
		os.WriteFile(filepath.Join(root, "devices/system/cpu/online"), []byte(strings.Join(list, ",")+"\n"), 0o644)
		time.Sleep(5 * time.Millisecond)
	}
}

// TestOnlineCPUsWaitsForLateCPU: the runtime's request arrives before the
// hot-added CPU's sysfs entry; OnlineCPUs retries until it appears and
// onlines it.
func TestOnlineCPUsWaitsForLateCPU(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "devices/system/cpu/possible"), "0-2\n")
	write(t, filepath.Join(root, "devices/system/cpu/online"), "0\n")
	write(t, filepath.Join(root, "devices/system/cpu/cpu1/online"), "0\n")
	fakeKernel(t, root, 3)
	late := make(chan struct{})
	go func() {
		defer close(late)
		time.Sleep(200 * time.Millisecond)
		write(t, filepath.Join(root, "devices/system/cpu/cpu2/online"), "0\n")
	}()
	defer func() { <-late }()
	h := &Handler{Onliner: Onliner{SysfsRoot: root}}
	start := time.Now()
	if _, err := h.OnlineCPUMem(context.Background(), &pb.OnlineCPUMemRequest{NbCpus: 3, CpuOnly: true}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("returned after %v, before cpu2 existed", d)
	}
	for _, c := range []string{"cpu1", "cpu2"} {
		if s := read(t, filepath.Join(root, "devices/system/cpu", c, "online")); s != "1" {
			t.Errorf("%s online = %q", c, s)
		}
	}
}

func TestOnlineCPUsErrors(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "devices/system/cpu/possible"), "0-1\n")
	write(t, filepath.Join(root, "devices/system/cpu/online"), "0\n")
	h := &Handler{Onliner: Onliner{SysfsRoot: root, CPUTimeout: 300 * time.Millisecond}}
	// More CPUs than the guest can ever have: refused at once.
	_, err := h.OnlineCPUMem(context.Background(), &pb.OnlineCPUMemRequest{NbCpus: 4, CpuOnly: true})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "nb_cpus") {
		t.Errorf("nb_cpus 4 of 2 possible: %v", err)
	}
	// A CPU that never appears: DeadlineExceeded after CPUTimeout.
	start := time.Now()
	_, err = h.OnlineCPUMem(context.Background(), &pb.OnlineCPUMemRequest{NbCpus: 2, CpuOnly: true})
	if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "1 online") {
		t.Errorf("missing CPU: %v", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 5*time.Second {
		t.Errorf("gave up after %v, want ~300ms", d)
	}
}

func TestOnlineMemory(t *testing.T) {
	root := t.TempDir()
	mem := filepath.Join(root, "devices/system/memory")
	write(t, filepath.Join(mem, "memory0/online"), "1\n")
	write(t, filepath.Join(mem, "memory8/online"), "0\n")
	write(t, filepath.Join(mem, "memory9/online"), "0\n")
	write(t, filepath.Join(mem, "auto_online_blocks"), "offline\n")
	write(t, filepath.Join(mem, "block_size_bytes"), "8000000\n")
	n, err := (&Onliner{SysfsRoot: root}).OnlineMemory(true)
	if err != nil || n != 2 {
		t.Fatalf("OnlineMemory = %d, %v; want 2", n, err)
	}
	for _, b := range []string{"memory8", "memory9"} {
		if s := read(t, filepath.Join(mem, b, "online")); s != "1" {
			t.Errorf("%s online = %q", b, s)
		}
	}
	if s := read(t, filepath.Join(mem, "auto_online_blocks")); s != "online" {
		t.Errorf("auto_online_blocks = %q", s)
	}
	// No memory hotplug in the kernel at all.
	_, err = (&Handler{Onliner: Onliner{SysfsRoot: t.TempDir()}}).OnlineCPUMem(context.Background(), &pb.OnlineCPUMemRequest{})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("no memory dir: %v", err)
	}
}

func TestProbe(t *testing.T) {
	root := t.TempDir()
	h := &Handler{Onliner: Onliner{SysfsRoot: root}}
	_, err := h.MemHotplugByProbe(context.Background(), &pb.MemHotplugByProbeRequest{MemHotplugProbeAddr: []uint64{1 << 30}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "ARCH_MEMORY_PROBE") {
		t.Errorf("no probe file: %v", err)
	}
	write(t, filepath.Join(root, "devices/system/memory/probe"), "")
	write(t, filepath.Join(root, "devices/system/memory/block_size_bytes"), "8000000\n")
	if _, err := h.MemHotplugByProbe(context.Background(), &pb.MemHotplugByProbeRequest{MemHotplugProbeAddr: []uint64{0x18000000}}); err != nil {
		t.Fatal(err)
	}
	if s := read(t, filepath.Join(root, "devices/system/memory/probe")); s != "0x18000000" {
		t.Errorf("probe got %q", s)
	}
	// A block the kernel already has (memory3 = 0x18000000 / 128 MiB) is
	// skipped: the probe file keeps the previous write.
	write(t, filepath.Join(root, "devices/system/memory/memory3/online"), "0\n")
	write(t, filepath.Join(root, "devices/system/memory/probe"), "")
	if _, err := h.MemHotplugByProbe(context.Background(), &pb.MemHotplugByProbeRequest{MemHotplugProbeAddr: []uint64{0x18000000, 0x20000000}}); err != nil {
		t.Fatal(err)
	}
	if s := read(t, filepath.Join(root, "devices/system/memory/probe")); s != "0x20000000" {
		t.Errorf("probe got %q, want only the new block 0x20000000", s)
	}
	// One unaligned address: refused before anything is written.
	write(t, filepath.Join(root, "devices/system/memory/probe"), "")
	_, err = h.MemHotplugByProbe(context.Background(), &pb.MemHotplugByProbeRequest{MemHotplugProbeAddr: []uint64{0x28000000, 0x28001000}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "memHotplugProbeAddr[1]") {
		t.Errorf("unaligned address: %v", err)
	}
	if s := read(t, filepath.Join(root, "devices/system/memory/probe")); s != "" {
		t.Errorf("probe written (%q) for a refused request", s)
	}
	_, err = h.MemHotplugByProbe(context.Background(), &pb.MemHotplugByProbeRequest{MemHotplugProbeAddr: make([]uint64, MaxProbeAddrs+1)})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "memHotplugProbeAddr") {
		t.Errorf("too many addresses: %v", err)
	}
}

type fakeCPUSets struct {
	calls int
	err   error
}

func (f *fakeCPUSets) RefreshCPUSets() error { f.calls++; return f.err }

// TestOnlineCPUMemRefreshesCPUSets: containers' cpusets are refreshed
// after CPUs came online, not for a memory-only request, and a failed
// refresh is the RPC's error.
func TestOnlineCPUMemRefreshesCPUSets(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "devices/system/cpu/possible"), "0-1\n")
	write(t, filepath.Join(root, "devices/system/cpu/online"), "0-1\n")
	write(t, filepath.Join(root, "devices/system/memory/memory0/online"), "1\n")
	f := &fakeCPUSets{}
	h := &Handler{Onliner: Onliner{SysfsRoot: root}, CPUSets: f}
	if _, err := h.OnlineCPUMem(context.Background(), &pb.OnlineCPUMemRequest{}); err != nil || f.calls != 0 {
		t.Fatalf("memory only: %v, %d refreshes", err, f.calls)
	}
	if _, err := h.OnlineCPUMem(context.Background(), &pb.OnlineCPUMemRequest{NbCpus: 2, CpuOnly: true}); err != nil || f.calls != 1 {
		t.Fatalf("nb_cpus 2: %v, %d refreshes", err, f.calls)
	}
	f.err = fmt.Errorf("unable to set /sys/fs/cgroup/cpuset/keel/c1/cpuset.cpus")
	_, err := h.OnlineCPUMem(context.Background(), &pb.OnlineCPUMemRequest{NbCpus: 2, CpuOnly: true})
	if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "keel/c1") {
		t.Errorf("failed refresh: %v", err)
	}
}
