package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "x.img")
	cases := []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "usage:"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"build", "--nope"}, 2, "flag provided but not defined"},
		{[]string{"build", "--recipe", "alpine", "--agent", "/bin/busybox", "-o", out}, 2, `unknown recipe "alpine"`},
		{[]string{"build", "--fs", "xfs", "--agent", "/bin/busybox", "-o", out}, 2, `unknown filesystem "xfs"`},
		{[]string{"build", "--size", "12Q", "--agent", "/bin/busybox", "-o", out}, 2, "invalid size"},
		{[]string{"build", "--agent", "/bin/busybox"}, 2, "missing -o"},
		{[]string{"build", "--agent", "/bin/ls", "-o", out}, 1, "dynamically linked"},
		{[]string{"build", "--agent", filepath.Join(dir, "none"), "-o", out}, 1, "no such file"},
		{[]string{"build", "--agent", "/bin/busybox", "stray", "-o", out}, 2, "unexpected arguments"},
		{[]string{"build", "--dax-mode", "pmem", "--agent", "/bin/busybox", "-o", out}, 2, "--dax-mode needs --dax"},
		{[]string{"build", "--dax", "--dax-mode", "disk", "--agent", "/bin/busybox", "-o", out}, 2, `unknown --dax-mode "disk"`},
		{[]string{"build", "--recipe", "oci", "--platform", "amd64", "--agent", "/bin/busybox", "-o", out}, 2, `invalid platform "amd64"`},
		{[]string{"build", "--recipe", "oci", "--max-unpacked-size", "lots", "--agent", "/bin/busybox", "-o", out}, 2, "--max-unpacked-size"},
		{[]string{"build", "--recipe", "oci", "--max-files", "-1", "--agent", "/bin/busybox", "-o", out}, 2, "--max-files"},
		{[]string{"inspect"}, 2, "exactly one"},
		{[]string{"inspect", filepath.Join(dir, "none")}, 1, "no such file"},
	}
	for _, c := range cases {
		code, _, stderr := runCLI(c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("%q: exit %d, stderr %q; want %d and %q", c.args, code, stderr, c.code, c.want)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Fatalf("%q left %s behind", c.args, out)
		}
	}
}

func TestBuildAndInspect(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("busybox-static not installed")
	}
	out := filepath.Join(t.TempDir(), "root.img")
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	code, _, stderr := runCLI("build", "--recipe", "minimal", "--agent", "/bin/busybox", "--busybox", "--output", "image", "--fs", "erofs", "--dax", "--dax-mode", "pmem", "-o", out)
	if code != 0 {
		t.Fatalf("build exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, "keel-rootfs: wrote") {
		t.Errorf("no progress lines: %q", stderr)
	}
	code, stdout, stderr := runCLI("inspect", out)
	if code != 0 {
		t.Fatalf("inspect exit %d: %s", code, stderr)
	}
	for _, want := range []string{"format:     dax-image", `signature="NVDIMM_PFN_INFO" version=1.4 mode=pmem`, "dataoff=0x200000", "align=0x200000", "epoch:      1700000000", "input:      busybox /bin/busybox"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, stdout)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"": 0, "4096": 4096, "64M": 64 << 20, "1g": 1 << 30, "8K": 8192} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v", in, got, err)
		}
	}
	for _, bad := range []string{"-1M", "M", "1.5G", "99999999999999G"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}
