package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keelvm/keel/kernel-config/fragments"
	"github.com/keelvm/keel/kernel-config/kconfig"
)

func runCLI(args ...string) (string, string, error) {
	var out, errb bytes.Buffer
	err := run(context.Background(), args, &out, &errb)
	return out.String(), errb.String(), err
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{nil, "missing command"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"config"}, "-o FILE is required"},
		{[]string{"config", "--bogus"}, "flag provided but not defined"},
		{[]string{"build", "extra"}, `unexpected argument "extra"`},
		{[]string{"check"}, "exactly one of --config FILE or --running"},
		{[]string{"check", "--running", "--config", "x"}, "exactly one of"},
		{[]string{"check", "--config", "x", "--arch", "riscv"}, `unsupported arch "riscv"`},
	} {
		_, _, err := runCLI(tc.args...)
		if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%v: err = %v, want usage error %q", tc.args, err, tc.msg)
		}
	}
}

func TestBadFragmentsFailBeforeTouchingSources(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.conf")
	os.WriteFile(bad, []byte("# ok\nCONFIG_A=y\nCONFIG_B=maybe\n"), 0o644)
	contra := filepath.Join(dir, "contra.conf")
	os.WriteFile(contra, []byte("# CONFIG_VIRTIO is not set\n"), 0o644)
	for _, tc := range []struct {
		frags, msg string
	}{
		{"common,nope", `unknown fragment set "nope"`},
		{"+nope", `unknown opt-in fragment "+nope"`},
		{bad, bad + ":3: CONFIG_B: bad value"},
		{"common," + contra, contra + ":1: CONFIG_VIRTIO is not set contradicts kernel-config/fragments/common/virtio.conf:"},
	} {
		// --source points at an empty directory: the fragments must be
		// rejected before the missing tree is noticed.
		_, _, err := runCLI("config", "--source", dir, "--fragments", tc.frags, "-o", filepath.Join(dir, "out"))
		if err == nil || errors.Is(err, errUsage) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: err = %v, want %q", tc.frags, err, tc.msg)
		}
	}
	_, _, err := runCLI("config", "--source", dir, "-o", filepath.Join(dir, "out"))
	if err == nil || !strings.Contains(err.Error(), "not a kernel source tree") {
		t.Errorf("missing source: %v", err)
	}
}

func TestCheckConfigFile(t *testing.T) {
	frags, err := fragments.Select("common,x86_64")
	if err != nil {
		t.Fatal(err)
	}
	merged, _ := kconfig.Merge(frags...)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.config")
	os.WriteFile(good, []byte(kconfig.Render(merged)), 0o644)
	if out, _, err := runCLI("check", "--config", good); err != nil || out != "" {
		t.Errorf("good config: %v %q", err, out)
	}
	// Drop one option and turn another into a module.
	text := strings.Replace(kconfig.Render(merged), "CONFIG_VIRTIO_PMEM=y\n", "", 1)
	text = strings.Replace(text, "CONFIG_EROFS_FS=y\n", "CONFIG_EROFS_FS=m\n", 1)
	bad := filepath.Join(dir, "bad.config")
	os.WriteFile(bad, []byte(text), 0o644)
	out, _, err := runCLI("check", "--config", bad)
	if err == nil || !strings.Contains(err.Error(), "lacks 2 of") {
		t.Errorf("bad config: err = %v", err)
	}
	for _, want := range []string{"pmem-dax.conf", "CONFIG_VIRTIO_PMEM =y requested", "CONFIG_EROFS_FS =y requested, but the final config has CONFIG_EROFS_FS =m"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	syntax := filepath.Join(dir, "syntax.config")
	os.WriteFile(syntax, []byte("CONFIG_A=y\n\ngarbage\n"), 0o644)
	if _, _, err := runCLI("check", "--config", syntax); err == nil || !strings.Contains(err.Error(), syntax+":3:") {
		t.Errorf("syntax: %v", err)
	}
	if _, _, err := runCLI("check", "--config", filepath.Join(dir, "absent")); err == nil {
		t.Error("absent config accepted")
	}
}
