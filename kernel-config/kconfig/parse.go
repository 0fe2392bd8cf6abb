package kconfig

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// Pos is a position in a fragment or .config file.
type Pos struct {
	File string
	Line int
}

func (p Pos) String() string { return fmt.Sprintf("%s:%d", p.File, p.Line) }

// Setting is one option assignment read from a file.
type Setting struct {
	Name  string // without the CONFIG_ prefix
	Value string // "y", "m", "n" or a literal (quoted string, decimal, hex)
	Pos   Pos
}

// Line renders the setting the way a .config spells it.
func (s Setting) Line() string {
	if s.Value == "n" {
		return "# CONFIG_" + s.Name + " is not set"
	}
	return "CONFIG_" + s.Name + "=" + s.Value
}

// Describe renders the value for messages: "=y" or "is not set".
func (s Setting) Describe() string { return describe(s.Value) }

func describe(v string) string {
	if v == "n" || v == "" {
		return "is not set"
	}
	return "=" + v
}

// SyntaxError reports a malformed line.
type SyntaxError struct {
	Pos Pos
	Msg string
}

func (e *SyntaxError) Error() string { return e.Pos.String() + ": " + e.Msg }

// Fragment is a parsed configuration fragment: the settings in file order.
type Fragment struct {
	Name     string
	Settings []Setting
}

// maxLine bounds a single line; real .config lines are far shorter.
const maxLine = 64 * 1024

// ParseFragment reads a fragment. name is used in positions and errors.
// Accepted lines: blank, `# comment`, `# CONFIG_X is not set` and
// `CONFIG_X=<y|m|n|"string"|decimal|0xhex>`. A comment that starts with
// `# CONFIG_` but is not the exact "is not set" form is rejected, because a
// commented-out assignment in a fragment is ambiguous. Setting the same
// option twice with different values in one file is an error.
func ParseFragment(name string, r io.Reader) (*Fragment, error) {
	f := &Fragment{Name: name}
	seen := map[string]int{}
	err := scan(name, r, func(s Setting) error {
		if i, ok := seen[s.Name]; ok {
			prev := f.Settings[i]
			if prev.Value != s.Value {
				return &SyntaxError{s.Pos, fmt.Sprintf("CONFIG_%s %s contradicts %s (%s)", s.Name, s.Describe(), prev.Pos, prev.Describe())}
			}
			return nil
		}
		seen[s.Name] = len(f.Settings)
		f.Settings = append(f.Settings, s)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return f, nil
}

// Config is a complete configuration: option name to value. Options that
// are absent are "n".
type Config map[string]string

// Get returns the value of name, "n" when unset.
func (c Config) Get(name string) string {
	if v, ok := c[name]; ok && v != "" {
		return v
	}
	return "n"
}

// ParseConfig reads a full .config as written by Kconfig. Later lines
// override earlier ones, as Kconfig itself does.
func ParseConfig(name string, r io.Reader) (Config, error) {
	c := Config{}
	err := scan(name, r, func(s Setting) error {
		c[s.Name] = s.Value
		return nil
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

func scan(name string, r io.Reader, emit func(Setting) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxLine)
	line := 0
	for sc.Scan() {
		line++
		pos := Pos{name, line}
		s, ok, err := parseLine(sc.Text())
		if err != nil {
			return &SyntaxError{pos, err.Error()}
		}
		if !ok {
			continue
		}
		s.Pos = pos
		if err := emit(s); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return &SyntaxError{Pos{name, line + 1}, err.Error()}
	}
	return nil
}

// parseLine returns ok=false for blank and comment lines.
func parseLine(text string) (Setting, bool, error) {
	t := strings.TrimSpace(text)
	if t == "" {
		return Setting{}, false, nil
	}
	if strings.HasPrefix(t, "#") {
		rest := strings.TrimSpace(t[1:])
		if !strings.HasPrefix(rest, "CONFIG_") {
			return Setting{}, false, nil
		}
		name, ok := strings.CutSuffix(strings.TrimPrefix(rest, "CONFIG_"), " is not set")
		if !ok || !validName(name) {
			return Setting{}, false, fmt.Errorf("comment %q looks like an option: write `# CONFIG_NAME is not set` or move the text away from the start", t)
		}
		return Setting{Name: name, Value: "n"}, true, nil
	}
	rest, ok := strings.CutPrefix(t, "CONFIG_")
	if !ok {
		return Setting{}, false, fmt.Errorf("expected CONFIG_NAME=value, `# CONFIG_NAME is not set` or a # comment, got %q", clip(t))
	}
	name, value, ok := strings.Cut(rest, "=")
	if !ok {
		return Setting{}, false, fmt.Errorf("missing '=' in %q", clip(t))
	}
	if !validName(name) {
		return Setting{}, false, fmt.Errorf("invalid option name %q", clip("CONFIG_"+name))
	}
	if err := validValue(value); err != nil {
		return Setting{}, false, fmt.Errorf("CONFIG_%s: %v", name, err)
	}
	return Setting{Name: name, Value: value}, true, nil
}

func validName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

func validValue(v string) error {
	switch {
	case v == "":
		return fmt.Errorf("empty value (use `# CONFIG_NAME is not set` or \"\")")
	case v == "y" || v == "m" || v == "n":
		return nil
	case v[0] == '"':
		return validString(v)
	case strings.HasPrefix(v, "0x") || strings.HasPrefix(v, "0X"):
		if len(v) == 2 || !allOf(v[2:], isHex) {
			return fmt.Errorf("bad hex value %q", clip(v))
		}
		return nil
	default:
		d := strings.TrimPrefix(v, "-")
		if d == "" || !allOf(d, isDigit) {
			return fmt.Errorf("bad value %q: want y, m, n, a \"string\", a decimal or 0xhex number", clip(v))
		}
		return nil
	}
}

// validString accepts a double-quoted string with \" and \\ escapes and
// nothing after the closing quote.
func validString(v string) error {
	for i := 1; i < len(v); i++ {
		switch v[i] {
		case '\\':
			i++
		case '"':
			if i != len(v)-1 {
				return fmt.Errorf("text after closing quote in %q", clip(v))
			}
			return nil
		}
	}
	return fmt.Errorf("unterminated string %q", clip(v))
}

func allOf(s string, f func(byte) bool) bool {
	for i := 0; i < len(s); i++ {
		if !f(s[i]) {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isHex(c byte) bool   { return isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

// clip keeps error messages short for pathological input.
func clip(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}
