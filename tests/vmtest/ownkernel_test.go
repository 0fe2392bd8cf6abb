package vmtest

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/kernel-config/kbuild"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/rootfs-builder/build"
	"github.com/keelvm/keel/rootfs-builder/image"
	"github.com/keelvm/keel/rootfs-builder/recipe"
	"github.com/keelvm/keel/tests/vmm/qemu"
)

// TestOwnKernelBootsFromDAXRoot boots Keel's own kernel (kernel-config,
// every driver built in) with no initramfs straight from a `minimal --dax`
// image, on virtio-pmem and on nvdimm, and compares the agent's
// boot-to-ready time (guest clock) with Debian's kernel + module initramfs
// in the same run. CI builds the kernel first (make kernel); without it the
// test is skipped.
func TestOwnKernelBootsFromDAXRoot(t *testing.T) {
	if why := Available(); why != "" {
		t.Skip(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	k, err := kbuild.DefaultBuilt(ctx, "x86_64")
	if errors.Is(err, kbuild.ErrNotBuilt) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	kernel := k.BzImage
	if k.Vmlinux != "" {
		kernel = k.Vmlinux
	}
	agent, err := AgentBinary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "minimal-dax.ext4")
	if _, err := build.Run(ctx, build.Config{
		Recipe:  "minimal",
		Options: recipe.Options{Agent: agent},
		Output:  "image",
		Out:     img,
		FS:      image.Ext4,
		DAX:     true,
	}); err != nil {
		t.Fatal(err)
	}

	type result struct {
		name                 string
		initStart, ready     float64 // guest uptime, seconds
		bootDone             float64
		hostReady            time.Duration
		missingKernelOptions []string
	}
	boot := func(name string, cfg Config) result {
		t.Helper()
		start := time.Now()
		cfg.Log = testWriter{t}
		g, err := Boot(ctx, cfg)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		defer g.Close()
		r := result{name: name, hostReady: time.Since(start)}
		c, err := g.Dial(ctx)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		defer c.Close()
		d, err := c.Agent.GetGuestDetails(ctx, &pb.GuestDetailsRequest{})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, f := range d.AgentDetails.ExtraFeatures {
			if v, ok := strings.CutPrefix(f, "keel.boot.init_start="); ok {
				r.initStart, _ = strconv.ParseFloat(v, 64)
			}
			if v, ok := strings.CutPrefix(f, "keel.boot.listener_ready="); ok {
				r.ready, _ = strconv.ParseFloat(v, 64)
			}
			if v, ok := strings.CutPrefix(f, "keel.boot.boot_done="); ok {
				r.bootDone, _ = strconv.ParseFloat(v, 64)
			}
			if strings.HasPrefix(f, "keel.kernel.") {
				r.missingKernelOptions = append(r.missingKernelOptions, f)
			}
		}
		if r.ready == 0 {
			t.Errorf("%s: no listener_ready in %v", name, d.AgentDetails.ExtraFeatures)
		}
		// The kernel check's one result (agent/kernelcheck; that it runs
		// once is TestCheckRunsOnce's): a second GetGuestDetails reports
		// the same lines.
		d2, err := c.Agent.GetGuestDetails(ctx, &pb.GuestDetailsRequest{})
		if err != nil {
			t.Fatalf("%s: second GetGuestDetails: %v", name, err)
		}
		var again []string
		for _, f := range d2.AgentDetails.ExtraFeatures {
			if strings.HasPrefix(f, "keel.kernel.") {
				again = append(again, f)
			}
		}
		if !slices.Equal(again, r.missingKernelOptions) {
			t.Errorf("%s: kernel check changed between two GetGuestDetails: %v, then %v", name, r.missingKernelOptions, again)
		}
		t.Logf("%s: kernel check: %v", name, r.missingKernelOptions)
		// The boot finishes after the listener opened (init/boot.Start),
		// and GetGuestDetails waited for it (agent/bootgate).
		if r.bootDone < r.ready {
			t.Errorf("%s: boot_done %.6f, listener_ready %.6f: want the boot finished after the listener and before GetGuestDetails answered", name, r.bootDone, r.ready)
		}
		if !d.AgentDetails.InitDaemon {
			t.Errorf("%s: agent is not PID 1", name)
		}
		return r
	}
	root := []string{"root=/dev/pmem0", "rootfstype=ext4", "rootflags=dax", "ro", "init=/sbin/init"}
	results := []result{
		boot("keel kernel, virtio-pmem DAX root, no initrd", Config{
			Kernel: kernel, NoInitrd: true, Append: root,
			Pmem: []qemu.PmemDevice{{Path: img, Kind: qemu.VirtioPmem, ReadOnly: true}},
		}),
		boot("keel kernel, nvdimm fsdax root, no initrd", Config{
			Kernel: kernel, NoInitrd: true, Append: root,
			Pmem: []qemu.PmemDevice{{Path: img, Kind: qemu.NVDIMM, ReadOnly: true}},
		}),
		boot("Debian kernel + module initramfs", Config{}),
	}
	var sum strings.Builder
	for _, r := range results {
		fmt.Fprintf(&sum, "\n  %-46s init_start %6.3fs  listener_ready %6.3fs (guest uptime)  QEMU start -> agent answered %5.2fs", r.name, r.initStart, r.ready, r.hostReady.Seconds())
	}
	t.Logf("boot to ready:%s", sum.String())
	for _, r := range results[:2] {
		// Keel's kernel has /proc/config.gz and every required option.
		if len(r.missingKernelOptions) > 0 {
			t.Errorf("%s: the agent reports kernel gaps: %v", r.name, r.missingKernelOptions)
		}
	}
}
