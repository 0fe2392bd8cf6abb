package devmapper

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

// TestTableBuffer reads a DM_TABLE_LOAD buffer back the way the kernel's
// populate_table does (dm-ioctl.c): the first spec at data_start, each
// next one at the previous spec plus its next field, params the
// NUL-terminated string after each spec, all inside data_size.
func TestTableBuffer(t *testing.T) {
	table := []Target{
		{Start: 0, Length: 2048, Type: "crypt", Params: []byte("aes-xts-plain64 00ff 0 254:16 0")},
		{Start: 2048, Length: 8, Type: "zero"},
	}
	b, err := tableBuffer("keel-test", table, true)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if v := le.Uint32(b[0:]); v != 4 {
		t.Errorf("version major %d", v)
	}
	if int(le.Uint32(b[offDataSize:])) != len(b) || len(b)%8 != 0 {
		t.Errorf("data_size %d, buffer %d", le.Uint32(b[offDataSize:]), len(b))
	}
	if f := le.Uint32(b[offFlags:]); f&flagSecureData == 0 || f&flagReadOnly == 0 {
		t.Errorf("flags %#x: want secure data and read-only", f)
	}
	if n := le.Uint32(b[offTargetCount:]); n != 2 {
		t.Errorf("target_count %d", n)
	}
	if name := string(bytes.TrimRight(b[offName:offName+nameLen], "\x00")); name != "keel-test" {
		t.Errorf("name %q", name)
	}
	spec := int(le.Uint32(b[offDataStart:]))
	for i, want := range table {
		s := b[spec:]
		if le.Uint64(s[0:]) != want.Start || le.Uint64(s[8:]) != want.Length {
			t.Errorf("target %d: sectors %d+%d", i, le.Uint64(s[0:]), le.Uint64(s[8:]))
		}
		if typ := string(bytes.TrimRight(s[24:40], "\x00")); typ != want.Type {
			t.Errorf("target %d: type %q", i, typ)
		}
		end := bytes.IndexByte(s[specSize:], 0)
		if end < 0 || string(s[specSize:specSize+end]) != string(want.Params) {
			t.Errorf("target %d: params %q", i, s[specSize:])
		}
		spec += int(le.Uint32(s[20:]))
	}
	if spec != len(b) {
		t.Errorf("specs end at %d, buffer at %d", spec, len(b))
	}
}

func TestBadInput(t *testing.T) {
	for _, name := range []string{"", "a/b", strings.Repeat("x", 128), ".."} {
		if _, err := Create(name, []Target{{Length: 1, Type: "zero"}}, false); err == nil || !strings.Contains(err.Error(), "name") {
			t.Errorf("Create(%q): %v", name, err)
		}
	}
	if _, err := tableBuffer("x", []Target{{Length: 1, Type: "crypt", Params: []byte("a\x00b")}}, false); err == nil {
		t.Error("a NUL inside params was accepted")
	}
	if _, err := tableBuffer("x", []Target{{Length: 1, Type: strings.Repeat("t", 16)}}, false); err == nil {
		t.Error("a 16-byte target type was accepted")
	}
}
