package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const fixture = `package fixture

import "testing"

func TestPasses(t *testing.T) { t.Log("quiet when it passes") }
func TestFails(t *testing.T)  { t.Log("context for the failure"); t.Error("boom") }
func TestSkips(t *testing.T)  { t.Log("looking for qemu"); t.Skip("qemu-system-x86_64 is not installed") }
func TestParent(t *testing.T) {
	t.Run("child", func(t *testing.T) { t.Skipf("slow tier: set %s=1", "KEEL_SLOW_TESTS") })
}
`

// TestSummary runs go test -json on a real fixture package and checks the
// plain output, the skip list and the counts.
func TestSummary(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"go.mod":          "module fixture\n\ngo 1.22\n",
		"fixture_test.go": fixture,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "test", "-json", "-count=1", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=", "GOWORK=off")
	events, err := cmd.Output()
	if _, ok := err.(*exec.ExitError); !ok && err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	s := newSummary(&out)
	if err := s.read(bytes.NewReader(events)); err != nil {
		t.Fatal(err)
	}
	s.finish()
	got := out.String()
	t.Logf("summary:\n%s", got)
	for _, want := range []string{
		"context for the failure", "boom", "--- FAIL: TestFails", "FAIL\tfixture\t",
		"Skipped tests (2):",
		"  SKIP fixture TestSkips: fixture_test.go:7: qemu-system-x86_64 is not installed\n",
		"  SKIP fixture TestParent/child: fixture_test.go:9: slow tier: set KEEL_SLOW_TESTS=1\n",
		"\n2 passed, 1 failed, 2 skipped\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("summary lacks %q", want)
		}
	}
	for _, notWant := range []string{"quiet when it passes", "=== RUN", "looking for qemu\n"} {
		if strings.Contains(got, notWant) {
			t.Errorf("summary prints %q, which plain go test does not", notWant)
		}
	}
	if !strings.HasSuffix(got, "2 passed, 1 failed, 2 skipped\n") {
		t.Errorf("the count is not the last line")
	}
}

// TestExitStatus runs the command itself: a failing package makes it exit
// non-zero, a passing one 0, and go test's ok line is kept.
func TestExitStatus(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs go test twice; skipped in -short mode")
	}
	bin := filepath.Join(t.TempDir(), "testsummary")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		body string
		code int
		line string
	}{
		{"func TestOK(t *testing.T) {}\n", 0, "ok  \tfixture\t"},
		{"func TestBad(t *testing.T) { t.Fatal(\"no\") }\n", 1, "FAIL\tfixture\t"},
	} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module fixture\n\ngo 1.22\n"), 0o644)
		os.WriteFile(filepath.Join(dir, "x_test.go"), []byte("package fixture\n\nimport \"testing\"\n\n"+tc.body), 0o644)
		cmd := exec.Command(bin, "--", "-count=1", ".")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOFLAGS=", "GOWORK=off")
		out, err := cmd.Output()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.code || !strings.Contains(string(out), tc.line) {
			t.Errorf("%q: exit %d, want %d; output:\n%s", tc.body, code, tc.code, out)
		}
	}
}
