package main

import "testing"

func TestIsLibcontainerInit(t *testing.T) {
	pipe := func(k string) string {
		if k == "_LIBCONTAINER_INITPIPE" {
			return "3"
		}
		return ""
	}
	none := func(string) string { return "" }
	for _, tc := range []struct {
		name   string
		args   []string
		getenv func(string) string
		want   bool
	}{
		{"re-executed container init", []string{"/proc/self/exe", "init"}, pipe, true},
		{"stray init word on the kernel command line", []string{"/sbin/init", "init"}, none, false},
		{"no argument", []string{"keel-agent"}, pipe, false},
		{"other argument", []string{"keel-agent", "-debug"}, pipe, false},
	} {
		if got := isLibcontainerInit(tc.args, tc.getenv); got != tc.want {
			t.Errorf("%s: isLibcontainerInit(%q) = %v, want %v", tc.name, tc.args, got, tc.want)
		}
	}
}
