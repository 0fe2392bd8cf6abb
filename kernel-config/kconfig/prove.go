package kconfig

import (
	"fmt"
	"strconv"
)

// Dropped is a requested setting that did not survive into the final config.
type Dropped struct {
	Want   Setting
	Got    string // final value, "n" when unset
	Reason string // best-effort explanation, "" when unknown
}

func (d Dropped) String() string {
	s := fmt.Sprintf("%s: CONFIG_%s %s requested, but the final config has CONFIG_%s %s", d.Want.Pos, d.Want.Name, d.Want.Describe(), d.Want.Name, describe(d.Got))
	if d.Reason != "" {
		s += ": " + d.Reason
	}
	return s
}

// Explainer says why an option ended up with a value other than the one
// requested. *Tree implements it.
type Explainer interface {
	Explain(name, want string, final Config) string
}

// Prove checks that every requested setting survived into final. why may be
// nil; then Dropped.Reason is empty.
func Prove(requested []Setting, final Config, why Explainer) []Dropped {
	var out []Dropped
	for _, s := range requested {
		got := final.Get(s.Name)
		if sameValue(s.Value, got) {
			continue
		}
		d := Dropped{Want: s, Got: got}
		if why != nil {
			d.Reason = why.Explain(s.Name, s.Value, final)
		}
		out = append(out, d)
	}
	return out
}

// sameValue compares values, numerically when both are numbers so that
// 0x10 and 0x0010 agree.
func sameValue(a, b string) bool {
	if a == b {
		return true
	}
	x, errA := strconv.ParseInt(a, 0, 64)
	y, errB := strconv.ParseInt(b, 0, 64)
	return errA == nil && errB == nil && x == y
}
