// Package docs keeps README.md's generated sections equal to the code they
// describe, so the documentation cannot drift.
package docs

import (
	"os"
	"strings"
	"testing"

	"github.com/keelvm/keel/init/cmdline"
)

const readme = "../../README.md"

// section checks (or, with UPDATE_README=1, rewrites) the text between
// "<!-- NAME:begin ... -->\n" and "<!-- NAME:end -->".
func section(t *testing.T, name, want string) {
	t.Helper()
	data, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	begin := "<!-- " + name + ":begin"
	i := strings.Index(s, begin)
	if i < 0 {
		t.Fatalf("README.md lacks %q", begin)
	}
	i += strings.Index(s[i:], "\n") + 1
	j := strings.Index(s, "<!-- "+name+":end -->")
	if j < i {
		t.Fatalf("README.md lacks the end of section %s", name)
	}
	if s[i:j] == want {
		return
	}
	if os.Getenv("UPDATE_README") != "" {
		if err := os.WriteFile(readme, []byte(s[:i]+want+s[j:]), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("README.md section %s is stale; run UPDATE_README=1 go test ./tests/docs\nwant:\n%s", name, want)
}

func TestREADMECmdlineTable(t *testing.T) {
	section(t, "cmdline-table", cmdline.Table())
}
