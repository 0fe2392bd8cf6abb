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
		pid    int
		getenv func(string) string
		want   bool
	}{
		{"re-executed container init", []string{"/proc/self/exe", "init"}, 42, pipe, true},
		{"stray init word on the kernel command line, PID 1", []string{"/sbin/init", "init"}, 1, none, false},
		{"PID 1 even with the pipe variable", []string{"/sbin/init", "init"}, 1, pipe, false},
		{"init argument without the init pipe", []string{"keel-agent", "init"}, 42, none, false},
		{"no argument", []string{"keel-agent"}, 42, pipe, false},
		{"other argument", []string{"keel-agent", "-debug"}, 42, pipe, false},
	} {
		if got := isLibcontainerInit(tc.args, tc.pid, tc.getenv); got != tc.want {
			t.Errorf("%s: isLibcontainerInit(%q, %d) = %v, want %v", tc.name, tc.args, tc.pid, got, tc.want)
		}
	}
}
