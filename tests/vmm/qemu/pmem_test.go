package qemu

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/rootfs-builder/cpio"
	"github.com/keelvm/keel/tests/vmm/guestkernel"
)

// pmemFile creates a 16 MiB backing file that starts with a signature line.
func pmemFile(t *testing.T, sig string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), sig+".img")
	if err := os.WriteFile(p, []byte(sig+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 16<<20); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPmemAndDiskInGuest boots with a read-only nvdimm, a writable
// virtio-pmem device and a read-only virtio-blk disk, loads the modules from
// the initramfs and checks that each guest device shows its backing file's
// content through the expected driver.
func TestPmemAndDiskInGuest(t *testing.T) {
	g := guest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// virtio_pmem needs the PCI transport, which is a module in Debian.
	mods, err := g.ModulesFor(append([]string{"virtio_pci", "virtio_blk"}, guestkernel.PmemModules...)...)
	if err != nil {
		t.Fatal(err)
	}
	staging := t.TempDir()
	paths, err := g.InstallModules(ctx, staging, mods)
	if err != nil {
		t.Fatal(err)
	}
	extra, err := cpio.TreeEntries(staging)
	if err != nil {
		t.Fatal(err)
	}
	extra = append(extra,
		cpio.Bytes("etc/keeltest/modules", []byte(strings.Join(paths, "\n")+"\n"), 0o644),
		cpio.Bytes("etc/keeltest/dev-count", []byte("3\n"), 0o644))

	vm := launch(t, Config{
		Kernel: g.Image,
		Initrd: initramfs(t, g.Init, extra...),
		Append: cmdline + "devices",
		Pmem: []PmemDevice{
			{Path: pmemFile(t, "KEEL-NVDIMM-SIG"), Kind: NVDIMM, ReadOnly: true},
			{Path: pmemFile(t, "KEEL-VPMEM-SIG"), Kind: VirtioPmem},
		},
		Drives: []Drive{{Path: pmemFile(t, "KEEL-BLK-SIG"), ReadOnly: true}},
	})
	if err := vm.WaitSerial(ctx, "KEEL-TEST-DEVS-DONE"); err != nil {
		t.Fatal(err)
	}
	if err := vm.Wait(); err != nil {
		t.Fatal(err)
	}
	log := vm.SerialLog()
	if strings.Contains(log, "KEEL-TEST-ERROR") {
		t.Fatalf("guest reported an error:\n%s", log)
	}
	for sig, want := range map[string][2]string{
		"KEEL-NVDIMM-SIG": {"pmem", "/ndbus"},
		"KEEL-VPMEM-SIG":  {"pmem", "/virtio"},
		"KEEL-BLK-SIG":    {"vd", "/virtio"},
	} {
		dev := want[1]
		re := regexp.MustCompile(`KEEL-TEST-DEV ` + want[0] + `[a-z0-9]+ content="` + sig + `" device=(\S+)`)
		m := re.FindStringSubmatch(log)
		if m == nil {
			t.Errorf("no %s device with content %s:\n%s", want[0], sig, log)
			continue
		}
		if !strings.Contains(m[1], dev) {
			t.Errorf("%s is served by %s, want a %s device", sig, m[1], dev)
		}
	}
	if m := regexp.MustCompile(`KEEL-TEST-MODULES .*`).FindString(log); m != "" {
		t.Logf("%s (%d modules), done %.2fs after QEMU start", m, len(paths), time.Since(vm.Started()).Seconds())
	}
}
