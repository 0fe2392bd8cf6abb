package cpio

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"
)

var time0 = time.Unix(0, 0)

// FuzzReader feeds arbitrary bytes to the reader: it must return an error or
// entries, never panic or loop.
func FuzzReader(f *testing.F) {
	var buf bytes.Buffer
	WriteEntries(&buf, []Entry{Bytes("a/b", []byte("xyz"), 0o644), Symlink("l", "a")}, Options{})
	f.Add(buf.Bytes())
	f.Add([]byte("070701"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data))
		for i := 0; i < 1000; i++ {
			if _, err := r.Next(); err != nil {
				return
			}
			io.Copy(io.Discard, r)
		}
	})
}

// FuzzCleanPath checks that an accepted path never escapes the root and that
// writing it round-trips through the reader.
func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{"a", "/dev/console", "a/../b", "./x/", "..", "a//b", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		c, err := CleanPath(p)
		if err != nil {
			return
		}
		if c == "" || strings.HasPrefix(c, "/") || c == ".." || strings.HasPrefix(c, "../") || strings.Contains(c, "/../") || strings.HasSuffix(c, "/..") {
			t.Fatalf("CleanPath(%q) = %q escapes", p, c)
		}
		var buf bytes.Buffer
		if err := WriteEntries(&buf, []Entry{Bytes(p, []byte("d"), 0o644)}, Options{}); err != nil {
			t.Fatalf("write %q: %v", p, err)
		}
		r := NewReader(&buf)
		var last string
		for {
			h, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			last = h.Name
		}
		if last != c {
			t.Fatalf("last entry %q, want %q", last, c)
		}
	})
}
