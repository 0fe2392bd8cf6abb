package kconfig

import (
	"errors"
	"strings"
	"testing"
)

func TestParseFragment(t *testing.T) {
	good := `# a comment
CONFIG_A=y

  CONFIG_B=m
# CONFIG_C is not set
CONFIG_D="hello \"world\""
CONFIG_E=123
CONFIG_F=0x1F
CONFIG_G=-5
CONFIG_A=y
#comment without space
CONFIG_H=""
`
	f, err := ParseFragment("good.conf", strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	want := []Setting{
		{"A", "y", Pos{"good.conf", 2}},
		{"B", "m", Pos{"good.conf", 4}},
		{"C", "n", Pos{"good.conf", 5}},
		{"D", `"hello \"world\""`, Pos{"good.conf", 6}},
		{"E", "123", Pos{"good.conf", 7}},
		{"F", "0x1F", Pos{"good.conf", 8}},
		{"G", "-5", Pos{"good.conf", 9}},
		{"H", `""`, Pos{"good.conf", 12}},
	}
	if len(f.Settings) != len(want) {
		t.Fatalf("got %d settings %v, want %d", len(f.Settings), f.Settings, len(want))
	}
	for i, s := range f.Settings {
		if s != want[i] {
			t.Errorf("setting %d = %+v, want %+v", i, s, want[i])
		}
	}
}

func TestParseFragmentErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		line     int
		msg      string
	}{
		{"bare word", "CONFIG_A=y\nhello\n", 2, "expected CONFIG_NAME=value"},
		{"no equals", "CONFIG_A\n", 1, "missing '='"},
		{"bad name", "CONFIG_A-B=y\n", 1, "invalid option name"},
		{"empty name", "CONFIG_=y\n", 1, "invalid option name"},
		{"empty value", "\n\nCONFIG_A=\n", 3, "empty value"},
		{"bad value", "CONFIG_A=yes\n", 1, "bad value"},
		{"bad hex", "CONFIG_A=0xZZ\n", 1, "bad hex"},
		{"unterminated string", `CONFIG_A="abc` + "\n", 1, "unterminated string"},
		{"text after string", `CONFIG_A="abc" x` + "\n", 1, "text after closing quote"},
		{"commented assignment", "# CONFIG_A=y\n", 1, "looks like an option"},
		{"not set typo", "# CONFIG_A is not sett\n", 1, "looks like an option"},
		{"contradiction in file", "CONFIG_A=y\n\n# CONFIG_A is not set\n", 3, "contradicts x.conf:1"},
		{"trailing comment", "CONFIG_A=y # why\n", 1, "bad value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseFragment("x.conf", strings.NewReader(tc.in))
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("err = %v, want *SyntaxError", err)
			}
			if se.Pos.File != "x.conf" || se.Pos.Line != tc.line {
				t.Errorf("pos = %v, want x.conf:%d", se.Pos, tc.line)
			}
			if !strings.Contains(err.Error(), tc.msg) || !strings.HasPrefix(err.Error(), se.Pos.String()+": ") {
				t.Errorf("err = %q, want file:line prefix and %q", err, tc.msg)
			}
		})
	}
}

func TestParseFragmentLongLine(t *testing.T) {
	_, err := ParseFragment("long.conf", strings.NewReader("CONFIG_A=y\nCONFIG_B=\""+strings.Repeat("x", maxLine)+"\"\n"))
	if err == nil || !strings.HasPrefix(err.Error(), "long.conf:2: ") {
		t.Fatalf("err = %v, want long.conf:2 error", err)
	}
}

func TestParseConfigLaterWins(t *testing.T) {
	c, err := ParseConfig(".config", strings.NewReader("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_A=m\nCONFIG_S=\"x\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Get("A") != "m" || c.Get("B") != "n" || c.Get("MISSING") != "n" || c.Get("S") != `"x"` {
		t.Errorf("config = %v", c)
	}
}

func frag(t *testing.T, name, text string) *Fragment {
	t.Helper()
	f, err := ParseFragment(name, strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestMerge(t *testing.T) {
	a := frag(t, "a.conf", "CONFIG_A=y\nCONFIG_N=0x10\n")
	b := frag(t, "b.conf", "CONFIG_B=y\nCONFIG_A=y\nCONFIG_N=16\n")
	got, err := Merge(a, b)
	if err != nil {
		t.Fatal(err)
	}
	if r := Render(got); r != "CONFIG_A=y\nCONFIG_N=0x10\nCONFIG_B=y\n" {
		t.Errorf("merged = %q", r)
	}
	if got[0].Pos.File != "a.conf" {
		t.Errorf("first position kept: %v", got[0].Pos)
	}
}

func TestMergeConflicts(t *testing.T) {
	a := frag(t, "a.conf", "CONFIG_A=y\nCONFIG_B=y\nCONFIG_S=\"x\"\n")
	b := frag(t, "b.conf", "\n# CONFIG_A is not set\nCONFIG_B=m\nCONFIG_S=\"x\"\n")
	_, err := Merge(a, b)
	if err == nil {
		t.Fatal("want conflict")
	}
	var ce *ConflictError
	if !errors.As(err, &ce) || ce.Name != "A" {
		t.Fatalf("err = %v, want ConflictError for A", err)
	}
	msg := err.Error()
	for _, want := range []string{
		"b.conf:2: CONFIG_A is not set contradicts a.conf:1: CONFIG_A =y",
		"b.conf:3: CONFIG_B =m contradicts a.conf:2: CONFIG_B =y",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "CONFIG_S") {
		t.Errorf("equal values reported as conflict: %q", msg)
	}
}

func TestDigest(t *testing.T) {
	a := frag(t, "a.conf", "# why\nCONFIG_A=y\nCONFIG_B=y\n")
	b := frag(t, "b.conf", "CONFIG_B=y\n\n# other comment\nCONFIG_A=y\n")
	c := frag(t, "c.conf", "CONFIG_B=y\nCONFIG_A=m\n")
	if Digest(a.Settings) != Digest(b.Settings) {
		t.Error("digest depends on order or comments")
	}
	if Digest(a.Settings) == Digest(c.Settings) {
		t.Error("digest ignores values")
	}
}

type fakeWhy struct{}

func (fakeWhy) Explain(name, want string, final Config) string { return "because " + name }

func TestProve(t *testing.T) {
	req := frag(t, "r.conf", "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\n# CONFIG_D is not set\nCONFIG_N=0x10\nCONFIG_S=\"x\"\nCONFIG_M=m\n")
	final := Config{"A": "y", "B": "m", "D": "y", "N": "16", "S": `"y"`, "M": "y"}
	dropped := Prove(req.Settings, final, fakeWhy{})
	var names []string
	for _, d := range dropped {
		names = append(names, d.Want.Name+":"+d.Got)
		if d.Reason != "because "+d.Want.Name {
			t.Errorf("reason %q", d.Reason)
		}
	}
	if got := strings.Join(names, ","); got != `B:m,D:y,S:"y",M:y` {
		t.Errorf("dropped = %s", got)
	}
	if s := dropped[1].String(); s != "r.conf:4: CONFIG_D is not set requested, but the final config has CONFIG_D =y: because D" {
		t.Errorf("String() = %q", s)
	}
	if len(Prove(req.Settings[:1], final, nil)) != 0 {
		t.Error("A=y should be proven")
	}
}

func FuzzParseFragment(f *testing.F) {
	for _, s := range []string{
		"CONFIG_A=y\n# CONFIG_B is not set\n",
		"# comment\n\nCONFIG_S=\"a\\\"b\"\nCONFIG_H=0x1f\nCONFIG_I=-3\n",
		"CONFIG_A=y\nCONFIG_A=m\n",
		"# CONFIG_A=y\n",
		"CONFIG_X=\"unterminated\n",
		"CONFIG_=y\r\n",
		"\x00CONFIG_A=y",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		fr, err := ParseFragment("fuzz.conf", strings.NewReader(in))
		if err != nil {
			var se *SyntaxError
			if !errors.As(err, &se) || se.Pos.File != "fuzz.conf" || se.Pos.Line < 1 {
				t.Fatalf("error without position: %v", err)
			}
			return
		}
		// What parses must render and parse back to the same settings.
		again, err := ParseFragment("again.conf", strings.NewReader(Render(fr.Settings)))
		if err != nil {
			t.Fatalf("rendered fragment does not parse: %v\n%s", err, Render(fr.Settings))
		}
		if len(again.Settings) != len(fr.Settings) {
			t.Fatalf("round trip changed count %d -> %d", len(fr.Settings), len(again.Settings))
		}
		for i := range fr.Settings {
			if fr.Settings[i].Name != again.Settings[i].Name || fr.Settings[i].Value != again.Settings[i].Value {
				t.Fatalf("round trip changed %v -> %v", fr.Settings[i], again.Settings[i])
			}
		}
		if _, err := Merge(fr, again); err != nil {
			t.Fatalf("fragment conflicts with itself: %v", err)
		}
	})
}
