package qemu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func tempFile(t *testing.T, name string, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}

// argAfter returns the values following each occurrence of flag.
func argsAfter(args []string, flag string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			out = append(out, args[i+1])
		}
	}
	return out
}

func TestArgsMemoryAndDevices(t *testing.T) {
	kernel := tempFile(t, "vmlinuz", 1024)
	nv := tempFile(t, "a,b.img", 4<<20)
	vp := tempFile(t, "vp.img", 8<<20)
	cfg, sizes, err := Config{
		Kernel:               kernel,
		MemoryMiB:            256,
		VhostUserVsockSocket: "/run/vsock.sock",
		Pmem:                 []PmemDevice{{Path: nv, Kind: NVDIMM, ReadOnly: true}, {Path: vp, Kind: VirtioPmem}},
		Drives:               []Drive{{Path: kernel, ReadOnly: true}},
	}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	args := cfg.args(sizes, "/d/serial.log", "/d/qmp.sock")
	joined := strings.Join(args, " ")

	if got := argsAfter(args, "-machine"); len(got) != 1 || got[0] != "q35,accel=tcg,memory-backend=mem,nvdimm=on" {
		t.Errorf("-machine %v", got)
	}
	// 256 RAM + 12 pmem + 1024 headroom; one slot per pmem plus one spare.
	if got := argsAfter(args, "-m"); len(got) != 1 || got[0] != "256M,slots=3,maxmem=1292M" {
		t.Errorf("-m %v", got)
	}
	for _, want := range []string{
		"memory-backend-memfd,id=mem,size=256M,share=on",
		"memory-backend-file,id=pmem0,mem-path=" + strings.ReplaceAll(nv, ",", ",,") + ",size=4194304,share=on,readonly=on",
		"memory-backend-file,id=pmem1,mem-path=" + vp + ",size=8388608,share=on",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("missing %q in %s", want, joined)
		}
	}
	devs := argsAfter(args, "-device")
	for _, want := range []string{
		"vhost-user-vsock-pci,chardev=vsk,id=vsock0",
		"nvdimm,id=nv0,memdev=pmem0,unarmed=on",
		"virtio-pmem-pci,id=vpmem1,memdev=pmem1",
		"virtio-blk-pci,drive=drive0,id=blk0",
	} {
		if !strings.Contains(strings.Join(devs, "\n"), want) {
			t.Errorf("missing -device %q in %v", want, devs)
		}
	}
	if got := argsAfter(args, "-drive"); len(got) != 1 || !strings.HasSuffix(got[0], "format=raw,readonly=on") {
		t.Errorf("-drive %v", got)
	}
}

func TestArgsPlainVM(t *testing.T) {
	cfg, sizes, err := Config{Kernel: tempFile(t, "vmlinuz", 1), Append: "console=ttyS0 a=b,c"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	args := cfg.args(sizes, "/d/serial.log", "/d/qmp.sock")
	if got := argsAfter(args, "-m"); len(got) != 1 || got[0] != "512M" {
		t.Errorf("-m %v (no slots/maxmem without memory devices)", got)
	}
	if got := argsAfter(args, "-append"); len(got) != 1 || got[0] != "console=ttyS0 a=b,c" {
		t.Errorf("-append %v", got)
	}
	if got := argsAfter(args, "-cpu"); len(got) != 1 || got[0] != "max" {
		t.Errorf("-cpu %v", got)
	}
	if strings.Contains(strings.Join(args, " "), "nvdimm") {
		t.Error("nvdimm enabled without nvdimm devices")
	}
	if got := argsAfter(args, "-bios"); len(got) != 0 {
		t.Errorf("-bios %v without Firmware (QEMU's default)", got)
	}
	fw := tempFile(t, "fw.rom", 4096)
	cfg.Firmware = fw
	if got := argsAfter(cfg.args(sizes, "/d/serial.log", "/d/qmp.sock"), "-bios"); len(got) != 1 || got[0] != fw {
		t.Errorf("-bios %v, want [%s]", got, fw)
	}
	if _, _, err := (Config{Kernel: cfg.Kernel, Firmware: "/nonexistent.rom"}).withDefaults(); err == nil || !strings.Contains(err.Error(), "firmware") {
		t.Errorf("missing firmware: %v, want an error naming it", err)
	}
}

func TestConfigValidation(t *testing.T) {
	kernel := tempFile(t, "vmlinuz", 1)
	odd := tempFile(t, "odd.img", 3<<20)
	for name, tc := range map[string]struct {
		cfg  Config
		want string
	}{
		"no kernel":      {Config{}, "kernel path is required"},
		"missing kernel": {Config{Kernel: "/nonexistent/vmlinuz"}, "no such file"},
		"kernel is dir":  {Config{Kernel: t.TempDir()}, "not a regular file"},
		"tiny memory":    {Config{Kernel: kernel, MemoryMiB: 16}, "below 64"},
		"cpus":           {Config{Kernel: kernel, CPUs: -1}, "out of range"},
		"pmem kind":      {Config{Kernel: kernel, Pmem: []PmemDevice{{Path: odd, Kind: "dimm"}}}, `kind "dimm"`},
		"pmem size":      {Config{Kernel: kernel, Pmem: []PmemDevice{{Path: odd, Kind: NVDIMM}}}, "2 MiB units"},
		"maxmem":         {Config{Kernel: kernel, MaxMemMiB: 100}, "below memory plus pmem"},
		"drive":          {Config{Kernel: kernel, Drives: []Drive{{Path: "/nonexistent.img"}}}, "drive 0"},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := tc.cfg.withDefaults()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}
