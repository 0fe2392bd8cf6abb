package container

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateID(t *testing.T) {
	for _, id := range []string{"a", "0", "abc-DEF_1.2", strings.Repeat("f", MaxIDLen)} {
		if err := ValidateID("container_id", id); err != nil {
			t.Errorf("%q: %v", id, err)
		}
	}
	for _, id := range []string{"", ".", "..", "../x", "a/b", "/a", "-a", ".a", "_a", "a b", "a\x00", "é", strings.Repeat("f", MaxIDLen+1)} {
		err := ValidateID("exec_id", id)
		if !errors.Is(err, ErrInvalid) || !strings.HasPrefix(err.Error(), "exec_id") {
			t.Errorf("%q: %v", id, err)
		}
	}
}

func FuzzValidateID(f *testing.F) {
	for _, s := range []string{"a", "..", "a/b", "x.y-z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if ValidateID("container_id", id) == nil {
			if strings.ContainsAny(id, "/\x00") || id == "." || id == ".." || len(id) > MaxIDLen {
				t.Fatalf("unsafe id %q accepted", id)
			}
		}
	})
}
