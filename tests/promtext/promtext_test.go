package promtext

import (
	"math"
	"strings"
	"testing"
)

const sample = `# HELP keel_containers Containers the agent holds.
# TYPE keel_containers gauge
keel_containers 3
keel_guest_meminfo_bytes{item="MemFree"} 1.2345e+07
keel_guest_meminfo_bytes{item="Mem Total"} 268435456
keel_connections_evicted 0 1700000000000
keel_agent_go_gc_percent +Inf

keel_containers_total 10
keel_tabbed	7
keel_tabbed_labels{item="a b"}		8	1700000000000
`

func TestParse(t *testing.T) {
	got, err := Parse(sample)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		"keel_containers":                            3,
		`keel_guest_meminfo_bytes{item="MemFree"}`:   12345000,
		`keel_guest_meminfo_bytes{item="Mem Total"}`: 268435456,
		"keel_connections_evicted":                   0,
		"keel_agent_go_gc_percent":                   math.Inf(1),
		"keel_containers_total":                      10,
		"keel_tabbed":                                7,
		`keel_tabbed_labels{item="a b"}`:             8,
	}
	if len(got) != len(want) {
		t.Errorf("got %d samples %v, want %d", len(got), got, len(want))
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
}

func TestParseRejectsMalformedLines(t *testing.T) {
	for _, line := range []string{
		"keel_containers",
		"keel_containers three",
		"keel_containers 1 2 3",
		"keel_containers 1 noon",
		`keel_guest_meminfo_bytes{item="MemFree" 1`,
	} {
		if _, err := Parse("keel_ok 1\n" + line + "\n"); err == nil || !strings.Contains(err.Error(), "line 2") {
			t.Errorf("Parse(%q): %v, want an error naming line 2", line, err)
		}
	}
}

// A series given twice is an error (a map would keep only one of the
// values), tab-separated or not; the same name with other labels is not.
func TestParseRejectsDuplicateSeries(t *testing.T) {
	for _, text := range []string{
		"keel_ok 1\nkeel_ok 2\n",
		"keel_ok 1\nkeel_ok\t2\n",
		"keel_ok{a=\"b\"} 1\nkeel_ok{a=\"b\"}\t1\n",
	} {
		if _, err := Parse(text); err == nil || !strings.Contains(err.Error(), "line 2") || !strings.Contains(err.Error(), "twice") {
			t.Errorf("Parse(%q): %v, want an error naming line 2 as a duplicate", text, err)
		}
	}
	got, err := Parse("keel_ok 1\nkeel_ok{a=\"b\"} 2\nkeel_ok{a=\"c\"} 3\n")
	if err != nil || len(got) != 3 {
		t.Errorf("distinct label sets: %v, %v; want 3 series", got, err)
	}
}

func TestValue(t *testing.T) {
	for _, c := range []struct {
		series string
		want   float64
		ok     bool
	}{
		{"keel_containers", 3, true},
		{"keel_containers_total", 10, true}, // not confused with its prefix
		{`keel_guest_meminfo_bytes{item="MemFree"}`, 12345000, true},
		{"keel_connections_evicted", 0, true},
		{"keel_tabbed", 7, true},
		{`keel_tabbed_labels{item="a b"}`, 8, true},
		{"keel_contain", 0, false},
		{"keel_missing", 0, false},
	} {
		if v, ok := Value(sample, c.series); v != c.want || ok != c.ok {
			t.Errorf("Value(%s) = %v, %v; want %v, %v", c.series, v, ok, c.want, c.ok)
		}
	}
}
