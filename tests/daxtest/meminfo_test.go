package daxtest

import "testing"

func TestParseMeminfo(t *testing.T) {
	m, err := ParseMeminfo("MemTotal:         402108 kB\nMemAvailable:     366308 kB\nCached:            12952 kB\nActive(file):        220 kB\nInactive(file):    12840 kB\nHugePages_Total:       0\n")
	if err != nil {
		t.Fatal(err)
	}
	if m["Cached"] != 12952 || m["MemAvailable"] != 366308 || m.FileLRU() != 13060 || m["HugePages_Total"] != 0 {
		t.Errorf("parsed %v", m)
	}
	for _, bad := range []string{"", "Cached: x kB\n", "MemTotal: 1 kB\nCached: 2 kB\n"} {
		if _, err := ParseMeminfo(bad); err == nil {
			t.Errorf("ParseMeminfo(%q) = nil error", bad)
		}
	}
}
