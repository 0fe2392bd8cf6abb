package kbuild

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/kernel-config/fragments"
	"github.com/keelvm/keel/kernel-config/kconfig"
	"github.com/keelvm/keel/kernel-config/source"
)

func TestOverlay(t *testing.T) {
	base := "# head\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_BB=y\nCONFIG_C=\"x\"\n"
	req := []kconfig.Setting{{Name: "B", Value: "y"}, {Name: "C", Value: "n"}}
	got := string(overlay([]byte(base), req))
	want := "# head\nCONFIG_A=y\nCONFIG_BB=y\n# Keel fragments\nCONFIG_B=y\n# CONFIG_C is not set\n"
	if got != want {
		t.Errorf("overlay =\n%s\nwant\n%s", got, want)
	}
}

func TestDigest(t *testing.T) {
	frags, err := fragments.Select("common,x86_64")
	if err != nil {
		t.Fatal(err)
	}
	src := &source.Tree{Package: "linux-source-6.1", Version: "6.1.1-1"}
	o := Options{Source: src, Arch: "x86_64", Fragments: frags}
	d1, _ := Digest(o)
	o2 := o
	o2.Source = &source.Tree{Package: "linux-source-6.1", Version: "6.1.2-1"}
	d2, _ := Digest(o2)
	withDebug, _ := fragments.Select("common,x86_64,+debug")
	o3 := o
	o3.Fragments = withDebug
	d3, _ := Digest(o3)
	if d1 == d2 || d1 == d3 || len(d1) != 20 {
		t.Errorf("digests %s %s %s", d1, d2, d3)
	}
	if _, _, err := Image("riscv"); err == nil {
		t.Error("riscv accepted")
	}
}

// kernelSource returns the real tree: $KEEL_KERNEL_SOURCE, or Debian's
// linux-source-6.1 extracted into the cache (installed if root and absent).
func kernelSource(t *testing.T) *source.Tree {
	t.Helper()
	if testing.Short() {
		t.Skip("needs the kernel source tree")
	}
	if dir := os.Getenv("KEEL_KERNEL_SOURCE"); dir != "" {
		tree, err := source.FromDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		return tree
	}
	if _, err := source.InstalledVersion(context.Background(), source.DefaultPackage); err != nil && os.Getuid() != 0 {
		t.Skipf("%v and not root to install it", err)
	}
	tree, err := source.Ensure(context.Background(), source.DefaultPackage, source.DefaultCache, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// The shipped fragments survive Kconfig on the real tree: every requested
// option is in the final .config, for each architecture and with the
// opt-in sets.
func TestConfigureRealTreeProvesFragments(t *testing.T) {
	tree := kernelSource(t)
	obj := t.TempDir() // shared, so scripts/kconfig/conf is compiled once
	for _, tc := range []struct{ arch, spec string }{
		{"x86_64", "common,x86_64"},
		{"x86_64", "common,x86_64,+debug,+confidential"},
		{"arm64", "common,arm64"},
	} {
		t.Run(tc.arch+"/"+tc.spec, func(t *testing.T) {
			frags, err := fragments.Select(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			cfg, err := Configure(context.Background(), Options{Source: tree, Arch: tc.arch, Fragments: frags}, obj)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Final.Get("64BIT") != "y" {
				t.Error("not a 64-bit config: ARCH not honoured")
			}
			if tc.arch == "x86_64" && cfg.Final.Get("X86_64") != "y" {
				t.Error("x86_64 requested but X86_64 is not set")
			}
			if cfg.Final.Get("MODULES") != "n" {
				t.Error("MODULES enabled: the guest must not need modules")
			}
			t.Logf("%d options proven in %s", len(cfg.Requested), time.Since(start).Round(time.Millisecond))
		})
	}
}

// A fragment whose options cannot survive fails with every dropped option
// and the unmet dependency read from the Kconfig tree.
func TestConfigureRealTreeNamesUnmetDependencies(t *testing.T) {
	tree := kernelSource(t)
	bad, err := kconfig.ParseFragment("bad.conf", strings.NewReader(
		"CONFIG_LIBNVDIMM=y\nCONFIG_MEMORY_HOTREMOVE=y\nCONFIG_NO_SUCH_OPTION=y\nCONFIG_VIRTIO_VSOCKETS=y\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Configure(context.Background(), Options{Source: tree, Arch: "x86_64", Fragments: []*kconfig.Fragment{bad}}, t.TempDir())
	var de *DroppedError
	if !errors.As(err, &de) {
		t.Fatalf("err = %v, want DroppedError", err)
	}
	msg := err.Error()
	for _, want := range []string{
		"bad.conf:1: CONFIG_LIBNVDIMM =y requested",
		"unmet BLK_DEV=n",
		"bad.conf:2: CONFIG_MEMORY_HOTREMOVE",
		"MIGRATION=n",
		"bad.conf:3: CONFIG_NO_SUCH_OPTION", "no `config NO_SUCH_OPTION`",
		"bad.conf:4: CONFIG_VIRTIO_VSOCKETS", "VIRTIO=n",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if len(de.Dropped) != 4 {
		t.Errorf("dropped %d, want 4", len(de.Dropped))
	}
}
