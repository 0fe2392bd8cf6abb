package cmdline

import (
	"flag"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite README.md from Table()")

func TestFields(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"  a  b=c\td\n", []string{"a", "b=c", "d"}},
		{`a="b c" d`, []string{"a=b c", "d"}},
		{`"a=b c" d`, []string{"a=b c", "d"}},
		{`a=b -- agent.log=debug`, []string{"a=b"}},
		{`a="unterminated b`, []string{"a=unterminated b"}},
		{`x="" y`, []string{"x=", "y"}},
	} {
		if got := Fields(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Fields(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParse(t *testing.T) {
	d := Default()
	for _, tc := range []struct {
		name  string
		in    string
		want  func(c *Config)
		warns []string // keys expected in warnings, in order
	}{
		{name: "empty", in: "", want: func(*Config) {}},
		{name: "kata runtime line",
			in: `tsc=reliable console=hvc0 agent.log=debug agent.log_vport=1025 agent.debug_console agent.debug_console_vport=1026 agent.hotplug_timeout=10 agent.container_pipe_size=2097152 agent.passfd_listener_port=1027 systemd.unified_cgroup_hierarchy=1`,
			want: func(c *Config) {
				c.LogLevel = slog.LevelDebug
				c.LogVPort = 1025
				c.DebugConsole = true
				c.DebugConsoleVPort = 1026
				c.HotplugTimeout = 10 * time.Second
				c.ContainerPipeSize = 2 << 20
				c.PassfdListenerPort = 1027
			}},
		{name: "debug console defaults its port", in: "agent.debug_console",
			want: func(c *Config) { c.DebugConsole, c.DebugConsoleVPort = true, 1026 }},
		{name: "bool forms", in: "agent.debug_console=0 agent.devmode=yes",
			want: func(c *Config) { c.DevMode, c.LogLevel = true, slog.LevelDebug }},
		{name: "level mapping", in: "agent.log=critical", want: func(c *Config) { c.LogLevel = slog.LevelError }},
		{name: "trace", in: "agent.log=TRACE", want: func(c *Config) { c.LogLevel = slog.LevelDebug }},
		{name: "last wins", in: "agent.log=debug agent.log=warn", want: func(c *Config) { c.LogLevel = slog.LevelWarn }},
		{name: "bad value keeps default", in: "agent.log=loud agent.log_vport=-1 agent.hotplug_timeout=0 agent.container_pipe_size=x",
			want: func(*Config) {}, warns: []string{"agent.log", "agent.log_vport", "agent.hotplug_timeout", "agent.container_pipe_size"}},
		{name: "port overflow", in: "agent.log_vport=4294967296", want: func(*Config) {}, warns: []string{"agent.log_vport"}},
		{name: "unknown agent key", in: "agent.frobnicate=1 quiet foo.bar=2",
			want: func(*Config) {}, warns: []string{"agent.frobnicate"}},
		{name: "duration form", in: "agent.hotplug_timeout=1500ms", want: func(c *Config) { c.HotplugTimeout = 1500 * time.Millisecond }},
		{name: "server addr", in: `agent.server_addr=unix:///run/keel.sock`, want: func(c *Config) { c.ServerAddr = "unix:///run/keel.sock" }},
		{name: "bad server addr", in: `agent.server_addr=tcp://x`, want: func(*Config) {}, warns: []string{"agent.server_addr"}},
		{name: "root", in: "root=/dev/vda rootfstype=ext4 rootflags=noatime ro",
			want: func(c *Config) { c.Root, c.RootFSType, c.RootFlags = "/dev/vda", "ext4", "noatime" }},
		{name: "agent.rootfs wins", in: "agent.rootfs=/dev/pmem0 root=/dev/vda rw",
			want: func(c *Config) { c.Root, c.RootRW = "/dev/pmem0", true }},
		{name: "root by uuid ignored", in: "root=UUID=1234", want: func(*Config) {}, warns: []string{"root"}},
		{name: "cgroup v1 by systemd", in: "systemd.unified_cgroup_hierarchy=0", want: func(c *Config) { c.Cgroup = "v1" }},
		{name: "agent.cgroup wins", in: "agent.cgroup=v2 systemd.unified_cgroup_hierarchy=0", want: func(*Config) {}},
		{name: "bad cgroup", in: "agent.cgroup=v3", want: func(*Config) {}, warns: []string{"agent.cgroup"}},
		{name: "favordynmods on", in: "agent.cgroup_favordynmods", want: func(c *Config) { c.CgroupFavorDynmods = true }},
		{name: "favordynmods off", in: "agent.cgroup_favordynmods=0", want: func(c *Config) { c.CgroupFavorDynmods = false }},
		{name: "bad favordynmods", in: "agent.cgroup_favordynmods=maybe", want: func(*Config) {}, warns: []string{"agent.cgroup_favordynmods"}},
		{name: "modules", in: "agent.modules=virtio-pmem,loop:max_loop=8:max_part=4",
			want: func(c *Config) {
				c.Modules = []Module{{Name: "virtio_pmem"}, {Name: "loop", Params: "max_loop=8 max_part=4"}}
			}},
		{name: "bad module", in: "agent.modules=ok,../evil", want: func(*Config) {}, warns: []string{"agent.modules"}},
		{name: "hostname", in: "agent.hostname=sandbox-1", want: func(c *Config) { c.Hostname = "sandbox-1" }},
		{name: "bad hostname", in: `agent.hostname="a b"`, want: func(*Config) {}, warns: []string{"agent.hostname"}},
		{name: "entropy", in: "agent.entropy=00ff10", want: func(c *Config) { c.Entropy = []byte{0, 0xff, 0x10} }},
		{name: "bad entropy", in: "agent.entropy=zz", want: func(*Config) {}, warns: []string{"agent.entropy"}},
		{name: "flag given a value", in: "ro=1", want: func(*Config) {}, warns: []string{"ro"}},
		{name: "config file", in: "agent.config_file=/etc/keel.toml", want: func(c *Config) { c.ConfigFile = "/etc/keel.toml" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := d
			want.Modules, want.Entropy = nil, nil
			tc.want(&want)
			got, warns := Parse(tc.in)
			if len(got.Modules) == 0 {
				got.Modules = nil
			}
			if len(got.Entropy) == 0 {
				got.Entropy = nil
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Parse(%q)\n got %+v\nwant %+v", tc.in, got, want)
			}
			var keys []string
			for _, w := range warns {
				keys = append(keys, w.Key)
				if w.String() == "" {
					t.Errorf("empty warning text")
				}
			}
			if !reflect.DeepEqual(keys, tc.warns) {
				t.Errorf("warnings %q, want keys %q", warns, tc.warns)
			}
		})
	}
}

func TestWarningNamesKeyAndValue(t *testing.T) {
	_, w := Parse("agent.log=loud")
	if len(w) != 1 || !strings.Contains(w[0].String(), "agent.log") || !strings.Contains(w[0].String(), "loud") || !strings.Contains(w[0].String(), `keeping "info"`) {
		t.Fatalf("warning = %v", w)
	}
}

// TestTableMatchesDefaults keeps the documented defaults honest.
func TestTableMatchesDefaults(t *testing.T) {
	d := Default()
	seen := map[string]bool{}
	for _, p := range Params {
		if seen[p.Name] {
			t.Errorf("duplicate parameter %s", p.Name)
		}
		seen[p.Name] = true
		if got := p.get(&d); got != p.Default {
			t.Errorf("%s: documented default %q, Default() gives %q", p.Name, p.Default, got)
		}
		if p.Meaning == "" {
			t.Errorf("%s: no meaning documented", p.Name)
		}
	}
}

// TestRoundTrip checks that each parameter's get renders something its set
// accepts again (so the table and the parser describe the same syntax).
func TestRoundTrip(t *testing.T) {
	c, w := Parse("agent.log=warn agent.debug_console_vport=7 agent.log_vport=1025 agent.hotplug_timeout=9 agent.launch_process_timeout=2 agent.container_pipe_size=4096 agent.passfd_listener_port=1027 agent.devmode agent.trace agent.config_file=/a agent.modules=a:b=1,c agent.rootfs=/dev/pmem0 rootfstype=erofs rootflags=x rw agent.cgroup=v1 agent.hostname=h agent.entropy=abcd agent.server_addr=vsock://3:99")
	if len(w) != 0 {
		t.Fatal(w)
	}
	for _, p := range Params {
		v := p.get(&c)
		var again Config = Default()
		st := &state{}
		switch v {
		case "true", "false":
			if p.Name == "ro" || p.Name == "rw" {
				continue
			}
		}
		if err := p.set(&again, st, v, false); err != nil && v != "" {
			t.Errorf("%s: set(get()=%q): %v", p.Name, v, err)
		}
	}
}

func TestReadme(t *testing.T) {
	const head = "# Keel agent kernel command line\n\n" +
		"Generated from `init/cmdline.Params` (`go test ./init/cmdline -update`); a test keeps it in sync.\n" +
		"Kata's names keep Kata's meanings; `Keel:` marks Keel's own.\n\n"
	want := head + Table()
	if *update {
		if err := os.WriteFile("README.md", []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatal("README.md is out of date: run go test ./init/cmdline -update")
	}
}

func TestParseFile(t *testing.T) {
	c, w := ParseFile(`
# Kata-style agent config
log_level = "debug"   # trailing comment
debug_console = true
hotplug_timeout = 5
server_addr = "vsock://-1:2048"
bogus = 1
modules = "loop:max_loop=4"
[endpoints]
allowed = ["CreateContainerRequest"]
`, Default())
	if c.LogLevel != slog.LevelDebug || !c.DebugConsole || c.DebugConsoleVPort != 1026 || c.HotplugTimeout != 5*time.Second ||
		c.ServerAddr != "vsock://-1:2048" || len(c.Modules) != 1 || c.Modules[0].Params != "max_loop=4" {
		t.Errorf("ParseFile: %+v", c)
	}
	if len(w) != 2 || w[0].Key != "bogus" || w[1].Value != "endpoints" {
		t.Errorf("warnings %v", w)
	}
	// the command line overrides the file
	c2, _ := ParseWith(c, "agent.log=error")
	if c2.LogLevel != slog.LevelError || !c2.DebugConsole {
		t.Errorf("ParseWith: %+v", c2)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "agent.log=debug", `a="b c" agent.debug_console -- x`, "agent.modules=a:b=c,d",
		"agent.entropy=00ff", "root=/dev/pmem0 rootfstype=erofs ro", "agent.hotplug_timeout=1h",
		"\"\"\"=", "agent.log_vport=99999999999", "agent.cgroup=v1 systemd.unified_cgroup_hierarchy=1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, _ := Parse(s)
		if c.HotplugTimeout <= 0 || c.ServerAddr == "" || (c.Cgroup != "v1" && c.Cgroup != "v2") {
			t.Fatalf("invariant broken by %q: %+v", s, c)
		}
		if len(c.Entropy) > MaxEntropyBytes {
			t.Fatalf("entropy too long")
		}
		if c.DebugConsole && c.DebugConsoleVPort == 0 {
			t.Fatalf("debug console without port")
		}
		for _, m := range c.Modules {
			if !validModuleName(m.Name) {
				t.Fatalf("bad module %q", m.Name)
			}
		}
		_, _ = ParseFile(s, Default())
	})
}
