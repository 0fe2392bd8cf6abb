package fragments

import (
	"io/fs"
	"strings"
	"testing"

	"github.com/keelvm/keel/kernel-config/kconfig"
	"github.com/keelvm/keel/kernel-config/required"
)

func TestSelectMergesWithoutConflict(t *testing.T) {
	for _, spec := range []string{"common,x86_64", "common,x86_64,+debug,+confidential", "common,arm64,+debug"} {
		frags, err := Select(spec)
		if err != nil {
			t.Fatalf("%s: %v", spec, err)
		}
		if _, err := kconfig.Merge(frags...); err != nil {
			t.Errorf("%s: %v", spec, err)
		}
	}
}

func TestSelectErrors(t *testing.T) {
	for _, tc := range []struct{ spec, msg string }{
		{"common,riscv", `unknown fragment set "riscv"`},
		{"+nope", `unknown opt-in fragment "+nope"`},
		{"+../common/fs", "unknown opt-in fragment"},
		{"opt", `unknown fragment set "opt"`},
		{"", "is empty"},
		{"/does/not/exist.conf", "no such file"},
	} {
		_, err := Select(tc.spec)
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("Select(%q) = %v, want %q", tc.spec, err, tc.msg)
		}
	}
}

func TestSelectFileFromDisk(t *testing.T) {
	p := t.TempDir() + "/bad.conf"
	if err := writeFile(p, "CONFIG_A=y\nnonsense\n"); err != nil {
		t.Fatal(err)
	}
	_, err := Select("common," + p)
	if err == nil || !strings.HasPrefix(err.Error(), p+":2: ") {
		t.Errorf("err = %v, want %s:2 syntax error", err, p)
	}
}

// Every option in every fragment carries a comment saying why, on the
// line(s) right above it, and every fragment is built in (no =m).
func TestEveryOptionExplained(t *testing.T) {
	names, _ := fs.Glob(files, "*/*.conf")
	if len(names) < 15 {
		t.Fatalf("only %d fragments", len(names))
	}
	for _, n := range names {
		b, _ := fs.ReadFile(files, n)
		lines := strings.Split(string(b), "\n")
		for i, l := range lines {
			if !strings.HasPrefix(l, "CONFIG_") && !strings.HasSuffix(l, " is not set") {
				continue
			}
			if i == 0 || !strings.HasPrefix(lines[i-1], "# ") || strings.HasSuffix(lines[i-1], " is not set") {
				t.Errorf("%s:%d: %s has no comment line above it", n, i+1, l)
			}
			if strings.HasSuffix(l, "=m") {
				t.Errorf("%s:%d: %s: Keel's guest loads no modules, use =y", n, i+1, l)
			}
		}
	}
}

// The runtime list in package required and the build fragments agree.
func TestRequiredOptionsAreRequested(t *testing.T) {
	for _, arch := range Arches {
		frags, err := Select(DefaultSpec(arch))
		if err != nil {
			t.Fatal(err)
		}
		merged, err := kconfig.Merge(frags...)
		if err != nil {
			t.Fatal(err)
		}
		cfg := map[string]string{}
		for _, s := range merged {
			cfg[s.Name] = s.Value
		}
		for _, m := range required.Check(cfg) {
			t.Errorf("%s: %v: required but not requested by %s", arch, m, DefaultSpec(arch))
		}
	}
}
