package timeline

import (
	"strings"
	"testing"
	"time"
)

func TestMarks(t *testing.T) {
	reset()
	Mark("a")
	time.Sleep(2 * time.Millisecond)
	Mark("b")
	e := Entries()
	if len(e) != 2 || e[0].Name != "a" || e[1].Since-e[0].Since < 2*time.Millisecond {
		t.Fatalf("entries %+v", e)
	}
	if e[0].Since <= 0 || e[0].Since > Now() {
		t.Fatalf("not boot-relative: %v now %v", e[0].Since, Now())
	}
	if s := String(); !strings.HasPrefix(s, "a=") || !strings.Contains(s, " b=") || !strings.Contains(s, "(+") {
		t.Fatalf("String() = %q", s)
	}
	enc := Encode()
	reset()
	Decode(enc + ",bad,x:-1,:3")
	if got := Entries(); len(got) != 2 || got[1] != e[1] {
		t.Fatalf("decode %+v want %+v", got, e)
	}
	for i := 0; i < 2*maxEntries; i++ {
		Mark("x")
	}
	if len(Entries()) != maxEntries {
		t.Fatalf("unbounded")
	}
	if _, ok := Lookup("b"); !ok {
		t.Fatal("lookup")
	}
}
