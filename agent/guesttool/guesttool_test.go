package guesttool

import (
	"os"
	"path/filepath"
	"testing"
)

func TestFind(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	write := func(dir, name string, mode os.FileMode) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	write(a, "notexec", 0o644)
	write(b, "notexec", 0o755)
	write(a, "both", 0o755)
	write(b, "both", 0o755)
	if err := os.Mkdir(filepath.Join(a, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", b)
	for _, c := range []struct {
		name    string
		usePath bool
		want    string
	}{
		{"both", false, filepath.Join(a, "both")},       // first dir wins
		{"notexec", false, filepath.Join(b, "notexec")}, // not executable in a: skipped
		{"adir", false, ""},                             // a directory is no tool
		{"missing", true, ""},                           // nowhere
		{"onlypath", false, ""},                         // $PATH not asked
	} {
		got, ok := Find(c.name, []string{a, b}, c.usePath)
		if got != c.want || ok != (c.want != "") {
			t.Errorf("Find(%q, usePath=%v) = %q, %v; want %q", c.name, c.usePath, got, ok, c.want)
		}
	}
	write(b, "onlypath", 0o755)
	if got, ok := Find("onlypath", []string{a}, true); !ok || got != filepath.Join(b, "onlypath") {
		t.Errorf("Find on $PATH = %q, %v", got, ok)
	}
	if _, ok := Find("onlypath", []string{a}, false); ok {
		t.Error("Find looked on $PATH when not asked")
	}
}
