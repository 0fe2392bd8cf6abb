package cmdline

import (
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// Kata's well-known vsock ports (kata-agent-api-facts.md).
const (
	DefaultServerAddr        = "vsock://-1:1024"
	DefaultDebugConsoleVPort = 1026
	DefaultHotplugTimeout    = 3 * time.Second
	// DefaultLaunchProcTimeout bounds a container or process start. Not
	// Kata's 6 s: Kata's agent uses the option only for its guest
	// components' sockets, while the Kata runtime waits 60 s for a
	// CreateContainer (create_container_timeout) and 60 s for other
	// requests; a start the host still waits for is never failed here (see
	// SPECIFICATION.md).
	DefaultLaunchProcTimeout  = 60 * time.Second
	MaxEntropyBytes           = 512 // agent.entropy seeds longer than this are refused
	maxHostnameLen            = 64
	defaultLogLevel           = slog.LevelInfo
	cgroupV1, cgroupV2        = "v1", "v2"
	unifiedCgroupHierarchyKey = "systemd.unified_cgroup_hierarchy"
)

// DefaultCgroupFavorDynmods is agent.cgroup_favordynmods's default: off,
// as the in-guest A/B could not show P1 clearly faster with it. Measured
// in the guest (tests/bench/guestbench, 2 vCPU TCG, host load 12-20,
// paired off/on rounds): a lone cgroup.procs write after 0.3 s of quiet
// is faster with it in 8 of 9 counts (on/off median 0.27: the RCU
// grace-period stall goes), but the /bin/true lifecycle over vsock is
// on/off 0.50-1.45, median 0.93, 6 of 9 below 1: the stall (tens of ms)
// is within TCG's noise on a ~0.5-2 s lifecycle. Re-measure on KVM.
const DefaultCgroupFavorDynmods = false

// Module is one entry of agent.modules: a module name and its parameter
// string as passed to finit_module(2) ("p1=a p2=b").
type Module struct {
	Name   string
	Params string
}

// Config is the agent configuration shared by guest (PID 1) and host mode.
// In host mode the caller starts from Default() and overrides fields from
// flags.
type Config struct {
	LogLevel             slog.Level    // agent.log
	DebugConsole         bool          // agent.debug_console
	DebugConsoleVPort    uint32        // agent.debug_console_vport, 0 = off
	LogVPort             uint32        // agent.log_vport, 0 = off
	ServerAddr           string        // agent.server_addr
	HotplugTimeout       time.Duration // agent.hotplug_timeout
	LaunchProcessTimeout time.Duration // agent.launch_process_timeout
	ContainerPipeSize    int           // agent.container_pipe_size, 0 = kernel default
	PassfdListenerPort   uint32        // agent.passfd_listener_port, 0 = off
	DevMode              bool          // agent.devmode
	Trace                bool          // agent.trace
	ConfigFile           string        // agent.config_file

	Modules    []Module // agent.modules
	Root       string   // agent.rootfs or root=; "" = stay on the initramfs
	RootFSType string   // rootfstype=; "" = probe ext4 then erofs
	RootFlags  string   // rootflags=
	RootRW     bool     // rw (the default, like Keel's images, is read-only)
	Cgroup     string   // "v2" (default) or "v1"
	Hostname   string   // agent.hostname
	Entropy    []byte   // agent.entropy (hex)

	CgroupFavorDynmods bool // agent.cgroup_favordynmods: cgroup2 mounted with favordynmods
}

// Default returns the configuration used when the command line says nothing.
func Default() Config {
	return Config{
		LogLevel:             defaultLogLevel,
		ServerAddr:           DefaultServerAddr,
		HotplugTimeout:       DefaultHotplugTimeout,
		LaunchProcessTimeout: DefaultLaunchProcTimeout,
		Cgroup:               cgroupV2,
		CgroupFavorDynmods:   DefaultCgroupFavorDynmods,
	}
}

// Warning describes a command-line entry that was ignored or not understood.
type Warning struct {
	Key   string
	Value string
	Msg   string
}

func (w Warning) String() string {
	if w.Value == "" {
		return fmt.Sprintf("%s: %s", w.Key, w.Msg)
	}
	return fmt.Sprintf("%s=%q: %s", w.Key, w.Value, w.Msg)
}

// Param documents and implements one command-line parameter.
type Param struct {
	Name    string // as written on the kernel command line
	File    string // key in agent.config_file ("" = not settable there)
	Default string // documented default; checked against Default() by a test
	Meaning string
	// set applies value; bare is true for a flag without "=".
	set func(c *Config, st *state, value string, bare bool) error
	// get renders the current value in the same form as Default.
	get func(c *Config) string
}

// state carries cross-parameter precedence during one parse.
type state struct {
	explicitCgroup bool
	explicitRoot   bool
}

// Params is the table of every parameter the parser understands, in the
// order shown in the documentation.
var Params = []Param{
	{Name: "agent.log", File: "log_level", Default: "info",
		Meaning: "log level: trace\\|debug\\|info\\|warn\\|error\\|critical (trace→debug, critical→error)",
		set: func(c *Config, _ *state, v string, _ bool) error {
			l, err := ParseLevel(v)
			if err == nil {
				c.LogLevel = l
			}
			return err
		},
		get: func(c *Config) string { return LevelName(c.LogLevel) }},
	{Name: "agent.debug_console", File: "debug_console", Default: "false",
		Meaning: "bare flag: start the debug console (a shell on vsock port agent.debug_console_vport, 1026 if unset)",
		set:     func(c *Config, _ *state, v string, b bool) error { return setBool(&c.DebugConsole, v, b) },
		get:     func(c *Config) string { return strconv.FormatBool(c.DebugConsole) }},
	{Name: "agent.debug_console_vport", File: "debug_console_vport", Default: "0",
		Meaning: "vsock port of the debug console; 0 = off (unless agent.debug_console)",
		set:     func(c *Config, _ *state, v string, _ bool) error { return setPort(&c.DebugConsoleVPort, v) },
		get:     func(c *Config) string { return strconv.FormatUint(uint64(c.DebugConsoleVPort), 10) }},
	{Name: "agent.log_vport", File: "log_vport", Default: "0",
		Meaning: "vsock port the agent listens on to stream its log to the host (Kata runtime uses 1025); 0 = off",
		set:     func(c *Config, _ *state, v string, _ bool) error { return setPort(&c.LogVPort, v) },
		get:     func(c *Config) string { return strconv.FormatUint(uint64(c.LogVPort), 10) }},
	{Name: "agent.server_addr", File: "server_addr", Default: DefaultServerAddr,
		Meaning: "ttrpc listen address: vsock://CID:PORT (-1 = any CID) or unix://PATH",
		set: func(c *Config, _ *state, v string, _ bool) error {
			if !strings.HasPrefix(v, "vsock://") && !strings.HasPrefix(v, "unix://") {
				return fmt.Errorf("want vsock://CID:PORT or unix://PATH")
			}
			c.ServerAddr = v
			return nil
		},
		get: func(c *Config) string { return c.ServerAddr }},
	{Name: "agent.hotplug_timeout", File: "hotplug_timeout", Default: "3",
		Meaning: "seconds to wait for a hot-plugged device (and the root device) to appear",
		set:     func(c *Config, _ *state, v string, _ bool) error { return setSeconds(&c.HotplugTimeout, v) },
		get:     func(c *Config) string { return fmtSeconds(c.HotplugTimeout) }},
	{Name: "agent.launch_process_timeout", File: "launch_process_timeout", Default: "60",
		Meaning: "seconds a container or process start (CreateContainer, StartContainer, ExecProcess) may take before it fails with DeadlineExceeded and is rolled back; Kata's agent uses it (default 6) only for its guest components",
		set:     func(c *Config, _ *state, v string, _ bool) error { return setSeconds(&c.LaunchProcessTimeout, v) },
		get:     func(c *Config) string { return fmtSeconds(c.LaunchProcessTimeout) }},
	{Name: "agent.container_pipe_size", File: "container_pipe_size", Default: "0",
		Meaning: "size in bytes of container stdio pipes (F_SETPIPE_SZ), charged per pipe to uid 0's pipe-user-pages-soft (64 MiB); 0 = kernel default (64 KiB), and a stream attached to passfd grows to 1 MiB while all grown pipes stay within 16 MiB (stdio.AttachPipeBudget)",
		set: func(c *Config, _ *state, v string, _ bool) error {
			n, err := strconv.ParseInt(v, 10, 32)
			if err != nil || n < 0 {
				return fmt.Errorf("want a non-negative byte count")
			}
			c.ContainerPipeSize = int(n)
			return nil
		},
		get: func(c *Config) string { return strconv.Itoa(c.ContainerPipeSize) }},
	{Name: "agent.passfd_listener_port", File: "passfd_listener_port", Default: "0",
		Meaning: "vsock port for passfd fast stdio (runtime-rs passes 1027); 0 = off, as in Kata's config.rs",
		set:     func(c *Config, _ *state, v string, _ bool) error { return setPort(&c.PassfdListenerPort, v) },
		get:     func(c *Config) string { return strconv.FormatUint(uint64(c.PassfdListenerPort), 10) }},
	{Name: "agent.devmode", File: "dev_mode", Default: "false",
		Meaning: "bare flag: developer mode (implies agent.log=debug)",
		set:     func(c *Config, _ *state, v string, b bool) error { return setBool(&c.DevMode, v, b) },
		get:     func(c *Config) string { return strconv.FormatBool(c.DevMode) }},
	{Name: "agent.trace", File: "tracing", Default: "false",
		Meaning: "bare flag: enable tracing (accepted for Kata compatibility)",
		set:     func(c *Config, _ *state, v string, b bool) error { return setBool(&c.Trace, v, b) },
		get:     func(c *Config) string { return strconv.FormatBool(c.Trace) }},
	{Name: "agent.config_file", Default: "",
		Meaning: "path of a config file (flat TOML subset: `key = value`, Kata field names); command-line values override it",
		set: func(c *Config, _ *state, v string, _ bool) error {
			if !strings.HasPrefix(v, "/") {
				return fmt.Errorf("want an absolute path")
			}
			c.ConfigFile = v
			return nil
		},
		get: func(c *Config) string { return c.ConfigFile }},
	{Name: "agent.modules", File: "modules", Default: "",
		Meaning: "Keel: kernel modules to load at boot, comma separated; parameters after colons: `virtio_pmem,loop:max_loop=8:max_part=4`",
		set: func(c *Config, _ *state, v string, _ bool) error {
			m, err := ParseModules(v)
			if err == nil {
				c.Modules = m
			}
			return err
		},
		get: func(c *Config) string { return FormatModules(c.Modules) }},
	{Name: "agent.rootfs", File: "rootfs", Default: "",
		Meaning: "Keel: root device to switch to (e.g. /dev/pmem0); wins over root=; empty = stay on the initramfs",
		set: func(c *Config, st *state, v string, _ bool) error {
			if !strings.HasPrefix(v, "/dev/") {
				return fmt.Errorf("want a /dev/ path")
			}
			c.Root, st.explicitRoot = v, true
			return nil
		},
		get: func(c *Config) string { return c.Root }},
	{Name: "root", Default: "",
		Meaning: "kernel: root device (only /dev/ paths are used by the agent)",
		set: func(c *Config, st *state, v string, _ bool) error {
			if !strings.HasPrefix(v, "/dev/") {
				return fmt.Errorf("only /dev/ paths are supported")
			}
			if !st.explicitRoot {
				c.Root = v
			}
			return nil
		},
		get: func(c *Config) string { return c.Root }},
	{Name: "rootfstype", Default: "",
		Meaning: "kernel: root filesystem type; empty = probe ext4 then erofs",
		set: func(c *Config, _ *state, v string, _ bool) error {
			if strings.ContainsAny(v, ",/ ") {
				return fmt.Errorf("want one filesystem type")
			}
			c.RootFSType = v
			return nil
		},
		get: func(c *Config) string { return c.RootFSType }},
	{Name: "rootflags", Default: "",
		Meaning: "kernel: extra root mount data (dax=always is added when the device supports DAX)",
		set:     func(c *Config, _ *state, v string, _ bool) error { c.RootFlags = v; return nil },
		get:     func(c *Config) string { return c.RootFlags }},
	{Name: "ro", Default: "true",
		Meaning: "kernel: mount the root read-only (the default)",
		set: func(c *Config, _ *state, v string, b bool) error {
			if !b {
				return fmt.Errorf("takes no value")
			}
			c.RootRW = false
			return nil
		},
		get: func(c *Config) string { return strconv.FormatBool(!c.RootRW) }},
	{Name: "rw", Default: "false",
		Meaning: "kernel: mount the root read-write",
		set: func(c *Config, _ *state, v string, b bool) error {
			if !b {
				return fmt.Errorf("takes no value")
			}
			c.RootRW = true
			return nil
		},
		get: func(c *Config) string { return strconv.FormatBool(c.RootRW) }},
	{Name: "agent.cgroup", File: "cgroup", Default: cgroupV2,
		Meaning: "Keel: cgroup layout, v2 (cgroup2 with nsdelegate) or v1 (per-controller hierarchies); wins over the two below",
		set: func(c *Config, st *state, v string, _ bool) error {
			if v != cgroupV1 && v != cgroupV2 {
				return fmt.Errorf("want v1 or v2")
			}
			c.Cgroup, st.explicitCgroup = v, true
			return nil
		},
		get: func(c *Config) string { return c.Cgroup }},
	{Name: "agent.cgroup_favordynmods", File: "cgroup_favordynmods", Default: strconv.FormatBool(DefaultCgroupFavorDynmods),
		Meaning: "Keel: mount cgroup2 with favordynmods (Linux 6.0+; ignored by older kernels): cheaper task migrations (container starts) for costlier forks and exits",
		set:     func(c *Config, _ *state, v string, b bool) error { return setBool(&c.CgroupFavorDynmods, v, b) },
		get:     func(c *Config) string { return strconv.FormatBool(c.CgroupFavorDynmods) }},
	{Name: "agent.unified_cgroup_hierarchy", File: "unified_cgroup_hierarchy", Default: "true",
		Meaning: "Kata: bool, false = cgroup v1",
		set:     setUnified,
		get:     func(c *Config) string { return strconv.FormatBool(c.Cgroup == cgroupV2) }},
	{Name: unifiedCgroupHierarchyKey, Default: "1",
		Meaning: "systemd: 0 = cgroup v1, 1 = cgroup v2",
		set:     setUnified,
		get: func(c *Config) string {
			if c.Cgroup == cgroupV1 {
				return "0"
			}
			return "1"
		}},
	{Name: "agent.hostname", File: "hostname", Default: "",
		Meaning: "Keel: guest hostname (RFC 1123 label characters); empty = leave unset until CreateSandbox",
		set: func(c *Config, _ *state, v string, _ bool) error {
			if !validHostname(v) {
				return fmt.Errorf("want at most %d characters of [A-Za-z0-9.-]", maxHostnameLen)
			}
			c.Hostname = v
			return nil
		},
		get: func(c *Config) string { return c.Hostname }},
	{Name: "agent.entropy", Default: "",
		Meaning: fmt.Sprintf("Keel: hex seed (at most %d bytes) mixed into the kernel RNG at boot with RNDADDENTROPY", MaxEntropyBytes),
		set: func(c *Config, _ *state, v string, _ bool) error {
			b, err := hex.DecodeString(v)
			if err != nil || len(b) == 0 || len(b) > MaxEntropyBytes {
				return fmt.Errorf("want 1..%d bytes of hex", MaxEntropyBytes)
			}
			c.Entropy = b
			return nil
		},
		get: func(c *Config) string { return hex.EncodeToString(c.Entropy) }},
}

var byName = func() map[string]*Param {
	m := make(map[string]*Param, len(Params))
	for i := range Params {
		m[Params[i].Name] = &Params[i]
	}
	return m
}()

// Parse parses a kernel command line on top of Default().
func Parse(cmdline string) (Config, []Warning) {
	return ParseWith(Default(), cmdline)
}

// ParseWith parses a kernel command line on top of base (for example a
// configuration loaded from agent.config_file).
func ParseWith(base Config, cmdline string) (Config, []Warning) {
	c := base
	c.Modules = append([]Module(nil), base.Modules...)
	c.Entropy = append([]byte(nil), base.Entropy...)
	var warns []Warning
	st := &state{}
	for _, f := range Fields(cmdline) {
		key, val, hasVal := strings.Cut(f, "=")
		p, ok := byName[key]
		if !ok {
			if strings.HasPrefix(key, "agent.") {
				warns = append(warns, Warning{Key: key, Value: val, Msg: "unknown agent parameter, ignored"})
			}
			continue
		}
		if err := p.set(&c, st, val, !hasVal); err != nil {
			warns = append(warns, Warning{Key: key, Value: val, Msg: err.Error() + "; keeping " + strconv.Quote(p.get(&c))})
		}
	}
	finish(&c)
	return c, warns
}

// finish applies the rules that tie parameters together.
func finish(c *Config) {
	if c.DevMode && c.LogLevel > slog.LevelDebug {
		c.LogLevel = slog.LevelDebug
	}
	if c.DebugConsole && c.DebugConsoleVPort == 0 {
		c.DebugConsoleVPort = DefaultDebugConsoleVPort
	}
}

// Fields splits a command line into parameters the way the kernel does:
// on spaces outside double quotes; a parameter's quotes are removed
// ("a=b c" and a="b c" both give `a=b c`). Everything after a bare "--"
// belongs to init's argv and is dropped.
func Fields(cmdline string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	flush := func() {
		if have {
			out = append(out, cur.String())
		}
		cur.Reset()
		have = false
	}
	for _, r := range cmdline {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == 0):
			flush()
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	flush()
	for i, f := range out {
		if f == "--" {
			return out[:i]
		}
	}
	return out
}

// ParseLevel maps a Kata log level name to a slog level.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "trace", "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error", "critical":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("unknown log level")
}

// LevelName is the inverse of ParseLevel for the four slog levels.
func LevelName(l slog.Level) string {
	switch {
	case l <= slog.LevelDebug:
		return "debug"
	case l <= slog.LevelInfo:
		return "info"
	case l <= slog.LevelWarn:
		return "warn"
	}
	return "error"
}

// ParseModules parses the agent.modules syntax: comma separated entries,
// each `name` or `name:p1=a:p2=b`. Names are normalised ('-' → '_').
func ParseModules(s string) ([]Module, error) {
	if s == "" {
		return nil, nil
	}
	var mods []Module
	for _, e := range strings.Split(s, ",") {
		parts := strings.Split(e, ":")
		name := strings.ReplaceAll(parts[0], "-", "_")
		if !validModuleName(name) {
			return nil, fmt.Errorf("bad module name %q", parts[0])
		}
		for _, p := range parts[1:] {
			if p == "" || strings.ContainsAny(p, " \t") {
				return nil, fmt.Errorf("bad parameter %q for module %s", p, name)
			}
		}
		mods = append(mods, Module{Name: name, Params: strings.Join(parts[1:], " ")})
	}
	return mods, nil
}

// FormatModules renders modules back into the agent.modules syntax.
func FormatModules(mods []Module) string {
	var b strings.Builder
	for i, m := range mods {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(m.Name)
		for _, p := range strings.Fields(m.Params) {
			b.WriteByte(':')
			b.WriteString(p)
		}
	}
	return b.String()
}

func validModuleName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

func validHostname(s string) bool {
	if s == "" || len(s) > maxHostnameLen || s[0] == '-' || s[0] == '.' {
		return false
	}
	for _, r := range s {
		if !(r == '-' || r == '.' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

func setBool(dst *bool, v string, bare bool) error {
	if bare {
		*dst = true
		return nil
	}
	switch strings.ToLower(v) {
	case "1", "y", "yes", "true", "on":
		*dst = true
	case "0", "n", "no", "false", "off":
		*dst = false
	default:
		return fmt.Errorf("want a boolean")
	}
	return nil
}

func setPort(dst *uint32, v string) error {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return fmt.Errorf("want a port number (uint32)")
	}
	*dst = uint32(n)
	return nil
}

// setSeconds accepts whole seconds ("3", as Kata) or a Go duration ("1500ms").
func setSeconds(dst *time.Duration, v string) error {
	if n, err := strconv.ParseUint(v, 10, 32); err == nil && n > 0 {
		*dst = time.Duration(n) * time.Second
		return nil
	}
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		*dst = d
		return nil
	}
	return fmt.Errorf("want a positive number of seconds")
}

func fmtSeconds(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10)
	}
	return d.String()
}

func setUnified(c *Config, st *state, v string, bare bool) error {
	var b bool
	if err := setBool(&b, v, bare); err != nil {
		return err
	}
	if st.explicitCgroup {
		return nil // agent.cgroup wins
	}
	if b {
		c.Cgroup = cgroupV2
	} else {
		c.Cgroup = cgroupV1
	}
	return nil
}

// Table renders Params as a Markdown table (name, default, meaning).
func Table() string {
	var b strings.Builder
	b.WriteString("| Parameter | Default | Meaning |\n|---|---|---|\n")
	for _, p := range Params {
		def := p.Default
		if def == "" {
			def = "(empty)"
		}
		fmt.Fprintf(&b, "| `%s` | `%s` | %s |\n", p.Name, def, p.Meaning)
	}
	return b.String()
}
