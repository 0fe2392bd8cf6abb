package service

import (
	"os"
	"strings"
	"testing"
)

const (
	tableBegin = "<!-- rpc-table:begin (generated: UPDATE_README=1 go test ./agent/service -run TestREADME) -->\n"
	tableEnd   = "<!-- rpc-table:end -->"
)

// TestREADMERPCTable keeps README.md's RPC table equal to what this build
// implements, so the documentation cannot drift from the code.
func TestREADMERPCTable(t *testing.T) {
	const path = "../../README.md"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	i, j := strings.Index(s, tableBegin), strings.Index(s, tableEnd)
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the rpc-table markers")
	}
	want := RPCTable()
	got := s[i+len(tableBegin) : j]
	if got == want {
		return
	}
	if os.Getenv("UPDATE_README") != "" {
		if err := os.WriteFile(path, []byte(s[:i+len(tableBegin)]+want+s[j:]), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("README.md's RPC table is stale; run UPDATE_README=1 go test ./agent/service -run TestREADME\nwant:\n%s", want)
}
