package addr

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	good := []struct {
		in   string
		want Address
	}{
		{"vsock://-1:1024", Address{Scheme: VSock, CID: AnyCID, Port: 1024}},
		{"vsock://3:1024", Address{Scheme: VSock, CID: 3, Port: 1024}},
		{"vsock://4294967295:1", Address{Scheme: VSock, CID: AnyCID, Port: 1}},
		{"hvsock:///run/vm/v.sock:1024", Address{Scheme: HVSock, Path: "/run/vm/v.sock", Port: 1024}},
		{"hvsock:///a:b.sock:7", Address{Scheme: HVSock, Path: "/a:b.sock", Port: 7}},
		{"unix:///tmp/agent.sock", Address{Scheme: Unix, Path: "/tmp/agent.sock"}},
	}
	for _, tc := range good {
		got, err := Parse(tc.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("Parse(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
		again, err := Parse(got.String())
		if err != nil || again != got {
			t.Errorf("round trip of %q via %q: %+v, %v", tc.in, got.String(), again, err)
		}
	}
	bad := []struct{ in, why string }{
		{"", "missing"},
		{"/tmp/x.sock", "missing"},
		{"tcp://1.2.3.4:5", `unknown scheme "tcp"`},
		{"vsock://3", "want vsock://CID:PORT"},
		{"vsock://x:1024", `CID "x"`},
		{"vsock://-2:1024", `CID "-2"`},
		{"vsock://3:99999999999", `port "99999999999"`},
		{"vsock://3:1:2", "want vsock://CID:PORT"},
		{"hvsock:///run/v.sock", "want hvsock:///path/to/uds:PORT"},
		{"hvsock:///run/v.sock:x", `port "x"`},
		{"hvsock://rel.sock:5", "not absolute"},
		{"hvsock://:5", "empty socket path"},
		{"unix://", "empty socket path"},
		{"unix://relative", "not absolute"},
		{"unix:///a\x00b", "NUL"},
	}
	for _, tc := range bad {
		_, err := Parse(tc.in)
		if err == nil {
			t.Errorf("Parse(%q) succeeded, want error", tc.in)
			continue
		}
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("Parse(%q) error %q, want ErrInvalid mentioning %q", tc.in, err, tc.why)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"vsock://-1:1024", "hvsock:///x:1", "unix:///p", "vsock://::", "hvsock://:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := Parse(s)
		if err != nil {
			return
		}
		b, err := Parse(a.String())
		if err != nil || a != b {
			t.Fatalf("%q parsed to %+v which renders as %q and parses to %+v, %v", s, a, a.String(), b, err)
		}
	})
}
