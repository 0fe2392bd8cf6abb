package kconfig

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// ConflictError reports one option that two fragments set differently.
type ConflictError struct {
	Name        string
	First, Then Setting
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%s: CONFIG_%s %s contradicts %s: CONFIG_%s %s",
		e.Then.Pos, e.Name, e.Then.Describe(), e.First.Pos, e.Name, e.First.Describe())
}

// Merge combines fragments in order. Repeating an option with the same
// value is allowed (fragments are per feature and features overlap); any
// other repetition is a contradiction, reported with both positions. All
// contradictions are reported, joined.
func Merge(frags ...*Fragment) ([]Setting, error) {
	var out []Setting
	index := map[string]int{}
	var errs []error
	for _, f := range frags {
		for _, s := range f.Settings {
			i, ok := index[s.Name]
			if !ok {
				index[s.Name] = len(out)
				out = append(out, s)
				continue
			}
			if !sameValue(out[i].Value, s.Value) {
				errs = append(errs, &ConflictError{Name: s.Name, First: out[i], Then: s})
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// Render writes settings as a .config fragment, one line each, in order.
func Render(settings []Setting) string {
	var b strings.Builder
	for _, s := range settings {
		b.WriteString(s.Line())
		b.WriteByte('\n')
	}
	return b.String()
}

// Digest is a stable hash of the settings' names and values, independent of
// order, comments and file names, so that editing a comment does not force
// a kernel rebuild.
func Digest(settings []Setting) string {
	lines := make([]string, len(settings))
	for i, s := range settings {
		lines[i] = s.Line()
	}
	sort.Strings(lines)
	h := sha256.Sum256([]byte(strings.Join(lines, "\n")))
	return hex.EncodeToString(h[:])
}
