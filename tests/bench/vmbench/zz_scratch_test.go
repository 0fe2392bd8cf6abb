package vmbench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/protocol/client"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/tests/vmm/qemu"
	"github.com/keelvm/keel/tests/vmtest"
)

func TestScratchBoot(t *testing.T) {
	if os.Getenv("SCRATCH") == "" {
		t.Skip("scratch")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	dir := t.TempDir()
	k := keelKernel(t, ctx)
	init := buildStatic(t, dir, "trivialinit")
	if os.Getenv("SCRATCH") == "agent" {
		init, _ = vmtest.AgentBinary(ctx)
	}
	img := daxImage(t, ctx, dir, init, false, nil)
	variants := strings.Split(os.Getenv("VARIANTS"), ";")
	for round := 0; round < rounds(); round++ {
		for _, v := range variants {
			kind := qemu.NVDIMM
			if strings.Contains(v, "virtio") {
				kind = qemu.VirtioPmem
			}
			gd := filepath.Join("/tmp/scratch-" + os.Getenv("SCRATCH"))
			os.RemoveAll(gd)
			os.MkdirAll(gd, 0o755)
			app := []string{"root=/dev/pmem0", "rootfstype=ext4", "rootflags=dax", "ro", "init=/sbin/init", "agent.log=info"}
			var extra []string
			mem := 512
			for _, f := range strings.Fields(v) {
				if a, ok := strings.CutPrefix(f, "k:"); ok {
					app = append(app, a)
				}
				if a, ok := strings.CutPrefix(f, "q:"); ok {
					extra = append(extra, strings.Split(a, "=")[0], strings.SplitN(a, "=", 2)[1])
				}
				if a, ok := strings.CutPrefix(f, "mem:"); ok {
					fmt.Sscan(a, &mem)
				}
			}
			cfg := vmtest.Config{Kernel: k, NoInitrd: true, DeferStart: true, Dir: gd, MemoryMiB: mem,
				Append: app,
				Pmem:   []qemu.PmemDevice{{Path: img, Kind: kind, ReadOnly: true}},
				QEMU:   func(c *qemu.Config) { c.ExtraArgs = append(c.ExtraArgs, extra...) }}
			g, err := vmtest.Boot(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if cl, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", g.VM.Pid())); round == 0 {
				t.Logf("cmd: %q", strings.Split(string(cl), "\x00"))
			}
			conn, err := client.DialConn(ctx, g.AgentAddr())
			if err != nil {
				t.Fatal(err)
			}
			var s, r, a float64
			var first time.Duration
			if os.Getenv("SCRATCH") == "agent" {
				c := client.New(conn)
				d, err := c.Agent.GetGuestDetails(ctx, &pb.GuestDetailsRequest{})
				first = time.Since(g.Booted)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("%v", d.AgentDetails.ExtraFeatures)
				a = uptimeNow(t, c)
				for _, f := range d.AgentDetails.ExtraFeatures {
					fmt.Sscanf(f, "keel.boot.init_start=%f", &s)
					fmt.Sscanf(f, "keel.boot.listener_ready=%f", &r)
				}
				time.Sleep(300 * time.Millisecond)
				out, _ := os.ReadFile(filepath.Join(gd, "serial.log"))
				if os.Getenv("SHOWLOG") != "" {
					t.Logf("%s", out)
				}
			} else {
				line, _ := bufio.NewReader(conn).ReadString('\n')
				first = time.Since(g.Booted)
				fmt.Sscanf(line, "init_start=%f listener_ready=%f accepted=%f", &s, &r, &a)
			}
			cpu := qemuCPU(g.VM.Pid())
			t.Logf("%-40s cpu %.2f first %.3f  prekernel %.3f  init_start %.3f ready %.3f  load %s", v, cpu, first.Seconds(), first.Seconds()-a, s, r, loadavg())
			conn.Close()
			g.Close()
		}
	}
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.Fields(string(b))[0]
}

func uptimeNow(t *testing.T, c *client.Client) float64 { return 0 }

func rounds() int {
	if os.Getenv("ROUNDS") != "" {
		n := 0
		fmt.Sscan(os.Getenv("ROUNDS"), &n)
		return n
	}
	return 3
}

func qemuCPU(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+2:])
	var u, s float64
	fmt.Sscan(f[11], &u)
	fmt.Sscan(f[12], &s)
	return (u + s) / 100
}
