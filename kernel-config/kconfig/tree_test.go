package kconfig

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseExprEval(t *testing.T) {
	c := Config{"A": "y", "B": "m", "S": `"x86"`, "N": "16", "H": "0x20"}
	for _, tc := range []struct {
		expr string
		want int
	}{
		{"A", 2}, {"B", 1}, {"C", 0}, {"!A", 0}, {"!B", 1}, {"!C", 2},
		{"A && B", 1}, {"A || C", 2}, {"(A || C) && !C", 2}, {"C || B", 1},
		{"S = \"x86\"", 2}, {"S = 'x86'", 2}, {"S != x86", 0}, {"N > 8", 2}, {"N <= 15", 0}, {"H >= 32", 2},
		{"B = m", 2}, {"A && $(cc-option,-mfoo)", 2}, {"y", 2}, {"n", 0},
		{"A = y # trailing comment", 2},
	} {
		e, err := ParseExpr(tc.expr)
		if err != nil {
			t.Errorf("ParseExpr(%q): %v", tc.expr, err)
			continue
		}
		if got := e.eval(c); got != tc.want {
			t.Errorf("%q = %d, want %d", tc.expr, got, tc.want)
		}
	}
	for _, bad := range []string{"", "A &&", "(A", "A B", "&& A", `"x`, "A @ B", "$(foo"} {
		if _, err := ParseExpr(bad); err == nil {
			t.Errorf("ParseExpr(%q) succeeded", bad)
		}
	}
}

func TestUnmet(t *testing.T) {
	c := Config{"A": "y", "B": "m"}
	e, _ := ParseExpr("A && B && C && !A && (C || D)")
	got := strings.Join(unmet(e, 2, c), "; ")
	want := "B=m; C=n; A=y (must be n); (C=n || D=n)"
	if got != want {
		t.Errorf("unmet = %q, want %q", got, want)
	}
}

// writeTree lays out a miniature Kconfig tree.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestTreeExplain(t *testing.T) {
	dir := writeTree(t, map[string]string{
		"Kconfig": `mainmenu "test"
source "arch/$(SRCARCH)/Kconfig"
source "drivers/Kconfig"
`,
		"arch/x86/Kconfig": `config X86_ONLY
	bool "x86 thing"
	help
	  depends on NOT_A_DEP
	  this help text must be skipped

config SIXTYFOUR
	bool "64-bit" if "$(ARCH)" = "x86"
	default "$(ARCH)" != "i386"
`,
		"arch/arm64/Kconfig": `config ARM_ONLY
	bool "arm thing"
`,
		"drivers/Kconfig": `menuconfig BLK_DEV
	bool "Block devices"

if BLK_DEV
rsource "nvdimm/Kconfig"
endif

menu "Misc"
	depends on MISC

config IN_MENU
	tristate "in menu"
	depends on A || \
		B
endmenu

comment "a comment"
	depends on NOTHING

choice
	prompt "pick"
config PICK_A
	bool "a"
config PICK_B
	bool "b"
endchoice

config HIDDEN
	bool
	select FORCED if BLK_DEV

config FORCED
	bool "forced"

config MODONLY
	tristate "mod only"
	depends on MOD
`,
		"drivers/nvdimm/Kconfig": `config LIBNVDIMM
	tristate "nvdimm"
	depends on PHYS_ADDR_T_64BIT
	depends on HAS_IOMEM

config HAS_IOMEM
	bool

config PROVIDES_IOMEM
	bool "provides iomem"
	select HAS_IOMEM
`,
	})
	tree, err := LoadTree(dir, "x86_64")
	if err != nil {
		t.Fatal(err)
	}
	if w := tree.Warnings(); len(w) != 0 {
		t.Errorf("warnings: %v", w)
	}
	if tree.Lookup("ARM_ONLY") != nil {
		t.Error("read another arch's Kconfig")
	}
	if s := tree.Lookup("X86_ONLY"); s == nil || s.Defs[0].Depends != nil {
		t.Errorf("help text parsed as dependency: %+v", s)
	}
	final := Config{"PHYS_ADDR_T_64BIT": "y", "BLK_DEV": "y", "FORCED": "y", "PICK_A": "y", "MOD": "m", "SIXTYFOUR": "y"}
	for _, tc := range []struct{ name, want, final, reason string }{
		{"NO_SUCH", "y", "", "no `config NO_SUCH`"},
		{"ARM_ONLY", "y", "", "another arch's option"},
		{"LIBNVDIMM", "y", "", "depends on (BLK_DEV && PHYS_ADDR_T_64BIT) && HAS_IOMEM (drivers/nvdimm/Kconfig:1): unmet HAS_IOMEM=n (no prompt; selected by PROVIDES_IOMEM)"},
		{"IN_MENU", "y", "", "depends on MISC && (A || B) (drivers/Kconfig:11): unmet MISC=n, (A=n || B=n)"},
		{"PICK_B", "y", "", "member of the choice at drivers/Kconfig:20"},
		{"HIDDEN", "y", "", "has no prompt"},
		{"FORCED", "n", "", "forced on by select from CONFIG_HIDDEN"},
		{"MODONLY", "y", "", "only m, so at most m: MOD=m"},
		{"SIXTYFOUR", "n", "", "its prompt (arch/x86/Kconfig:7) is hidden unless \"x86_64\" = \"x86\""},
	} {
		if tc.name == "FORCED" {
			final["HIDDEN"] = "y"
		}
		got := tree.Explain(tc.name, tc.want, final)
		if !strings.Contains(got, tc.reason) {
			t.Errorf("Explain(%s) = %q, want it to contain %q", tc.name, got, tc.reason)
		}
	}
}

func TestLoadTreeMissing(t *testing.T) {
	if _, err := LoadTree(t.TempDir(), "x86_64"); err == nil || !strings.Contains(err.Error(), "no top-level Kconfig") {
		t.Errorf("err = %v", err)
	}
}

func FuzzParseExpr(f *testing.F) {
	for _, s := range []string{"A && (B || !C)", `S = "x"`, "N >= 0x10", "$(cc-option,-m64) && A", "!(A)", "A = y # c", `A = 'a"b'`, `S = 'x'`} {
		f.Add(s)
	}
	c := Config{"A": "y", "B": "m"}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseExpr(s)
		if err != nil {
			return
		}
		v := e.eval(c)
		// The rendered form parses back to an expression of equal value.
		e2, err := ParseExpr(e.String())
		if err != nil {
			t.Fatalf("%q renders as %q which does not parse: %v", s, e.String(), err)
		}
		if e2.eval(c) != v {
			t.Fatalf("%q and its rendering %q differ", s, e.String())
		}
		_ = unmet(e, 2, c)
	})
}
