// Package boot is PID 1's bring-up, in order, as a script of named steps:
//
//	reaper.Start                         (before any child exists)
//	hold every fatal or stopping signal   (sigguard.Fatal; PID 1 only; Realtime in Finish)
//	mount /proc /sys /dev /dev/pts /dev/shm /run /tmp   (mounts.Base)
//	setsid; TIOCSCTTY /dev/console; dup onto 0,1,2
//	parse /proc/cmdline (+ agent.config_file)
//	echo 1 > /sys/kernel/rcu_expedited    (unless the command line chose)
//	mount the cgroup hierarchy            (mounts.CgroupRootPlan, CgroupV1)
//	load agent.modules                    (kmod)
//	switch to agent.rootfs/root= and re-exec (switchroot)   -- stage 2 resumes here
//	PATH, RLIMIT_NOFILE
//	SIGTERM/SIGPWR/SIGINT -> power off
//	log stream on agent.log_vport, debug console on agent.debug_console_vport
//	                                      -- Start returns; the agent listens
//	oom_score_adj, agent cgroup           (mounts.ProtectAgent; Finish)
//	hostname, ip link set lo up
//	entropy: agent.entropy seed, /dev/hwrng in the background
//
// Each step is logged like the shell line it replaces; a failing required
// step makes Start or Finish (Run does both) return an error (main then
// powers off). Milestones go to init/timeline: init_start, mounts_done,
// modules_loaded, root_switched, boot_done; main adds listener_ready
// between Start and Finish.
//
// Across the re-exec after switching root, the stage and the timeline
// travel in the environment (EnvStage, EnvTimeline) so the second Run
// only does what is left.
//
// In host mode (not PID 1) Run touches nothing system-wide: it starts the
// reaper (as child subreaper) and returns Default() configuration and a
// stderr logger; the caller applies its flags.
package boot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keelvm/keel/init/cmdline"
	"github.com/keelvm/keel/init/console"
	"github.com/keelvm/keel/init/entropy"
	"github.com/keelvm/keel/init/kmod"
	"github.com/keelvm/keel/init/mounts"
	"github.com/keelvm/keel/init/reaper"
	"github.com/keelvm/keel/init/shutdown"
	"github.com/keelvm/keel/init/sigguard"
	"github.com/keelvm/keel/init/step"
	"github.com/keelvm/keel/init/switchroot"
	"github.com/keelvm/keel/init/timeline"
	"golang.org/x/sys/unix"
)

// Environment variables carried across the re-exec after switching root.
const (
	EnvStage    = "KEEL_BOOT_STAGE"
	EnvTimeline = "KEEL_TIMELINE"
	stageSwitch = "switched"
)

// Defaults of the system setup.
const (
	Path          = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	MaxNoFile     = 1 << 20
	HWRNGTimeout  = 200 * time.Millisecond
	cmdlineSource = "/proc/cmdline"
)

// Result is what the rest of the agent needs from boot.
type Result struct {
	Config   cmdline.Config
	Warnings []cmdline.Warning
	Logger   *slog.Logger
	Level    *slog.LevelVar
	// LogStream holds the recent log lines and serves agent.log_vport (it
	// always exists so the ring can be exposed, e.g. in GetDiagnosticData).
	LogStream *console.Stream
	PID1      bool
	// RootIsInitramfs: / is the initramfs, pivot_root fails; containers
	// must use libcontainer's NoPivotRoot.
	RootIsInitramfs bool
	// Closers stop the log and debug-console listeners.
	Closers []io.Closer
	// finish is the rest of the boot after Start (Finish); nil in host
	// mode and once run.
	finish func(report func(step string)) error
}

// Options adjust Run for tests and host mode. The zero value is what PID 1
// in a VM uses.
type Options struct {
	// Cmdline replaces /proc/cmdline when non-nil.
	Cmdline *string
	// Listen opens the log and debug-console listeners (default vsock).
	Listen console.Listen
	// Console receives the log (default: stderr, which boot points at
	// /dev/console).
	Console io.Writer
	// NoConsoleSetup skips setsid/TIOCSCTTY/dup of /dev/console.
	NoConsoleSetup bool
	// IsolatedDev mounts a private tmpfs on /dev instead of devtmpfs
	// (mounts.BaseIsolated), for PID 1 in a namespace on a host.
	IsolatedDev bool
	// ExtraSteps run right after the base mounts (tests: device nodes
	// for an isolated /dev).
	ExtraSteps []step.Step
}

// Run brings the guest up when this process is PID 1; see the package doc.
func Run(ctx context.Context) (*Result, error) { return RunWith(ctx, Options{}) }

// RunWith is Run with Options: StartWith, then Finish.
func RunWith(ctx context.Context, o Options) (*Result, error) {
	res, err := StartWith(ctx, o)
	if err != nil {
		return res, err
	}
	return res, res.Finish()
}

// Start brings the guest up as far as the agent needs to serve (mounts,
// console, configuration, modules, root switch, PATH, RLIMIT_NOFILE,
// shutdown signals) and leaves the rest to Result.Finish: the agent's
// cgroup and OOM protection (mounts.ProtectAgent), lo up, hostname,
// entropy, the log and debug-console ports, then boot_done. The agent
// calls Finish right after opening its listener, with every RPC but the
// liveness probe held until it returned (agent/bootgate): under TCG that
// work is tens of milliseconds of newly translated kernel and Go code,
// which then overlaps the host's connection set-up instead of preceding
// the listener.
func Start(ctx context.Context) (*Result, error) { return StartWith(ctx, Options{}) }

// StartWith is Start with Options.
func StartWith(ctx context.Context, o Options) (*Result, error) {
	stage2 := os.Getenv(EnvStage) == stageSwitch
	if stage2 {
		timeline.Decode(os.Getenv(EnvTimeline))
		os.Unsetenv(EnvStage)
		os.Unsetenv(EnvTimeline)
	} else {
		timeline.Mark("init_start")
	}
	if o.Listen == nil {
		o.Listen = console.VsockListen
	}
	if err := reaper.Start(); err != nil {
		return nil, err
	}
	res := &Result{PID1: os.Getpid() == 1, LogStream: console.NewStream()}
	if res.PID1 {
		// Before anything else: no signal may end or stop PID 1.
		// The real-time signals in Finish: the runtime drops them until
		// then (sigguard.Realtime).
		sigguard.HoldSignals(sigguard.Fatal()...)
	}
	if !res.PID1 {
		res.Config = cmdline.Default()
		res.Logger, res.Level = console.NewLogger(res.Config.LogLevel, os.Stderr, res.LogStream)
		res.RootIsInitramfs = switchroot.RootIsInitramfs()
		return res, nil
	}

	// Until the command line is read, log everything (the early mount
	// steps are the only record of how the guest came up).
	if o.Console == nil {
		o.Console = os.Stderr
	}
	consoleSink := console.NewSink(o.Console, 0)
	log, lv := console.NewLogger(slog.LevelDebug, consoleSink, res.LogStream)
	res.Logger, res.Level = log, lv
	shutdown.SetLogger(log)
	shutdown.OnFinal(func() { consoleSink.Flush(time.Second) })

	if !stage2 {
		base := mounts.Base()
		if o.IsolatedDev {
			base = mounts.BaseIsolated()
		}
		// /proc first, then the command line's log level for the other
		// mounts: each console line costs ~1 ms under TCG (a port write
		// per byte), and at agent.log=info (the default) the mount steps
		// log nothing but the two steps mounting /proc, which run before
		// the level can be read and so are logged at every level.
		nproc := len(mounts.Proc())
		if err := step.Run(log, base[:nproc]); err != nil {
			return res, err
		}
		lv.Set(earlyLogLevel(o.Cmdline))
		if err := step.Run(log, append(base[nproc:], o.ExtraSteps...)); err != nil {
			return res, err
		}
	}
	if !o.NoConsoleSetup {
		if err := setupConsole(); err != nil {
			log.Warn("console setup", "err", err)
		}
		// fd 2 is the console now: fatal errors land there already; show
		// every goroutine in them.
		debug.SetTraceback("all")
	}

	cfg, warns, line := readConfig(o.Cmdline, log)
	res.Config, res.Warnings = cfg, warns
	lv.Set(cfg.LogLevel)
	for _, w := range warns {
		log.Warn("kernel command line", "warning", w.String())
	}
	log.Info("keel-agent booting", "stage", stageName(stage2), "entropy_seed_bytes", len(cfg.Entropy))
	// The whole configuration only at debug: formatting it runs fmt's
	// reflection printer, which nothing else runs before the agent
	// serves, and writes ~500 bytes to the serial console; under TCG both
	// cost before the agent can serve (first-run code is translated).
	if log.Enabled(ctx, slog.LevelDebug) {
		log.Debug("configuration", "config", fmt.Sprintf("%+v", redacted(cfg)))
	}

	if !stage2 {
		if !o.IsolatedDev {
			// Not for PID 1 of a namespace on a host: the switch is the
			// whole kernel's.
			if err := step.Run(log, rcuSteps(line)); err != nil {
				return res, err
			}
		}
		if err := step.Run(log, mounts.CgroupRootPlan(cfg)); err != nil {
			return res, err
		}
		if cfg.Cgroup == "v1" {
			b, err := os.ReadFile("/proc/cgroups")
			if err != nil {
				return res, fmt.Errorf("unable to read /proc/cgroups: %w", err)
			}
			if err := step.Run(log, mounts.CgroupV1(string(b))); err != nil {
				return res, err
			}
		}
		timeline.Mark("mounts_done")

		if len(cfg.Modules) > 0 {
			specs := make([]kmod.ModuleSpec, len(cfg.Modules))
			for i, m := range cfg.Modules {
				specs[i] = kmod.ModuleSpec{Name: m.Name, Params: m.Params}
			}
			if err := kmod.Load(specs, log); err != nil {
				return res, err
			}
			log.Info("modules loaded", "modules", cmdline.FormatModules(cfg.Modules))
		}
		timeline.Mark("modules_loaded")

		switch {
		case cfg.Root == "":
		case switchroot.IsRoot(cfg.Root):
			// Booted without an initramfs (Kata's image boot:
			// root=/dev/pmem0p1 ... init=/usr/bin/kata-agent): the
			// kernel mounted the root already.
			log.Info("root already mounted by the kernel, no switch_root", "root", cfg.Root)
		default:
			// Returns only on failure: on success the new init continues
			// at stage 2.
			return res, switchRoot(cfg, log, func() { consoleSink.Flush(time.Second) })
		}
	}

	// PATH and RLIMIT_NOFILE before the agent listens: its connection
	// cap is derived from the descriptor limit when it starts serving.
	if err := step.Run(log, systemSteps(cfg)); err != nil {
		return res, err
	}
	res.RootIsInitramfs = switchroot.RootIsInitramfs()
	shutdown.HandleSignals()
	// The log and debug-console ports open before the main listener: a
	// host that polls Health and then connects to them must not find them
	// refused. Opening them is a listen call and two goroutines.
	startServices(ctx, res, o.Listen)
	res.finish = func(report func(string)) error {
		if res.PID1 {
			report("hold realtime signals")
			sigguard.HoldSignals(sigguard.Realtime()...)
		}
		if err := step.RunReporting(log, mounts.ProtectAgent(cfg), report); err != nil {
			return err
		}
		if err := step.RunReporting(log, lateSystemSteps(cfg), report); err != nil {
			return err
		}
		report("seed entropy")
		seedEntropy(cfg, log)
		timeline.Mark("boot_done")
		log.Info("boot done", "timeline", timeline.String(), "root_is_initramfs", res.RootIsInitramfs)
		return nil
	}
	return res, nil
}

// Finish runs the rest of the boot that Start left (see Start); once, and
// nothing in host mode.
func (r *Result) Finish() error { return r.FinishReporting(nil) }

// FinishReporting is Finish that calls report (when not nil) with the name
// of each step before it runs (its shell line), so the boot gate can say
// which step a stuck boot is in.
func (r *Result) FinishReporting(report func(step string)) error {
	f := r.finish
	r.finish = nil
	if f == nil {
		return nil
	}
	if report == nil {
		report = func(string) {}
	}
	return f(report)
}

func stageName(stage2 bool) string {
	if stage2 {
		return "after switch_root"
	}
	return "initramfs"
}

// redacted hides the entropy seed from logs.
func redacted(c cmdline.Config) cmdline.Config {
	c.Entropy = nil
	return c
}

// readConfig parses the command line (and agent.config_file); it returns
// the raw line too, for the kernel's own parameters.
func readConfig(override *string, log *slog.Logger) (cmdline.Config, []cmdline.Warning, string) {
	var line string
	if override != nil {
		line = *override
	} else if b, err := os.ReadFile(cmdlineSource); err != nil {
		log.Error("unable to read kernel command line, using defaults", "err", err)
	} else {
		line = string(b)
	}
	cfg, warns := cmdline.Parse(line)
	if cfg.ConfigFile == "" {
		return cfg, warns, line
	}
	fileCfg, fw, err := cmdline.LoadFile(cfg.ConfigFile, cmdline.Default())
	if err != nil {
		log.Warn("agent.config_file ignored", "err", err)
		return cfg, warns, line
	}
	cfg, cw := cmdline.ParseWith(fileCfg, line) // the command line wins
	_ = cw                                      // same warnings as the first parse
	return cfg, append(warns, fw...), line
}

// earlyLogLevel is agent.log from the command line alone (agent.config_file
// is read once the mounts are done), for the mount steps before it.
func earlyLogLevel(override *string) slog.Level {
	line := ""
	if override != nil {
		line = *override
	} else if b, err := os.ReadFile(cmdlineSource); err == nil {
		line = string(b)
	} else {
		return slog.LevelDebug // keep the record of how the guest came up
	}
	cfg, _ := cmdline.Parse(line)
	return cfg.LogLevel
}

// RCUExpeditedPath is the kernel's switch for expedited RCU grace periods.
const RCUExpeditedPath = "/sys/kernel/rcu_expedited"

// rcuSteps make RCU grace periods expedited for the guest's lifetime. The
// kernel expedites them only until it runs init; after that every
// synchronize_rcu() waits out a normal grace period, several scheduler
// ticks. The agent's boot pays that in its cgroup steps (moving PID 1 into
// its cgroup and enabling controllers take cgroup_threadgroup_rwsem, whose
// writer waits a grace period; under TCG, steps of 10-140 ms each shrank to
// 1-12 ms), and so does every container start (the first cgroup.procs
// write after a quiet spell: +7-13 ms, see the perf notes). An expedited
// grace period costs an IPI per vCPU, cheap for a sandbox's few vCPUs. A
// command line naming rcupdate.rcu_expedited or rcupdate.rcu_normal has
// chosen already and is left alone; a kernel without the switch is no
// error.
func rcuSteps(kernelCmdline string) []step.Step {
	for _, f := range strings.Fields(kernelCmdline) {
		name, _, _ := strings.Cut(f, "=")
		if name == "rcupdate.rcu_expedited" || name == "rcupdate.rcu_normal" {
			return nil
		}
	}
	return []step.Step{step.Write{Path: RCUExpeditedPath, Data: "1", Opt: true}}
}

// setupConsole makes /dev/console our controlling terminal and fds 0-2.
func setupConsole() error {
	fd, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("unable to open /dev/console: %w", err)
	}
	defer unix.Close(fd)
	if _, err := unix.Setsid(); err != nil && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("setsid: %w", err)
	}
	if err := unix.IoctlSetInt(fd, unix.TIOCSCTTY, 1); err != nil {
		return fmt.Errorf("TIOCSCTTY: %w", err)
	}
	for i := 0; i < 3; i++ {
		if err := unix.Dup3(fd, i, 0); err != nil {
			return err
		}
	}
	return nil
}

// switchRoot mounts the root device, switches to it and re-execs; flush
// drains the console log first (exec would drop queued lines).
func switchRoot(cfg cmdline.Config, log *slog.Logger, flush func()) error {
	self, _ := os.Executable()
	fstype, data, err := switchroot.MountRoot(switchroot.Options{
		Device: cfg.Root, FSType: cfg.RootFSType, Flags: cfg.RootFlags, RW: cfg.RootRW,
		Timeout: cfg.HotplugTimeout, Log: log,
	})
	if err != nil {
		return err
	}
	initPath, err := switchroot.FindInit(switchroot.NewRoot, []string{self, "/sbin/init", "/usr/bin/keel-agent", "/init"})
	if err != nil {
		_ = unix.Unmount(switchroot.NewRoot, 0)
		return err
	}
	log.Info("switch_root", "root", cfg.Root, "fstype", fstype, "data", data, "init", initPath)
	if err := switchroot.Switch(switchroot.NewRoot, log); err != nil {
		return err
	}
	timeline.Mark("root_switched")
	env := append(os.Environ(), EnvStage+"="+stageSwitch, EnvTimeline+"="+timeline.Encode())
	argv := append([]string{initPath}, os.Args[1:]...)
	log.Info("exec", "init", initPath)
	flush()
	err = syscall.Exec(initPath, argv, env)
	return fmt.Errorf("unable to exec %s in the new root: %w", initPath, err)
}

func systemSteps(cfg cmdline.Config) []step.Step {
	return []step.Step{
		step.Func{Line: "export PATH=" + Path, Fn: func() error { return os.Setenv("PATH", Path) }},
		step.Func{Line: "ulimit -n " + strconv.Itoa(MaxNoFile), Fn: raiseNoFile, Opt: true},
	}
}

// lateSystemSteps run in Finish.
func lateSystemSteps(cfg cmdline.Config) []step.Step {
	s := []step.Step{
		step.Func{Line: "ip link set lo up", Fn: loUp},
	}
	if cfg.Hostname != "" {
		s = append(s, step.Func{Line: "hostname " + cfg.Hostname, Fn: func() error { return unix.Sethostname([]byte(cfg.Hostname)) }})
	}
	return s
}

// raiseNoFile sets RLIMIT_NOFILE to MaxNoFile, or to fs.nr_open when the
// kernel caps it lower. MaxNoFile is the kernel's default nr_open, so the
// first setrlimit normally succeeds and /proc/sys is not read at boot.
func raiseNoFile() error {
	n := uint64(MaxNoFile)
	// syscall.Setrlimit (not x/sys) so os/exec children inherit the new
	// limit instead of the one the Go runtime saved at start-up.
	err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: n, Max: n})
	if !errors.Is(err, syscall.EPERM) {
		return err
	}
	b, rerr := os.ReadFile("/proc/sys/fs/nr_open")
	if rerr != nil {
		return err
	}
	v, perr := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if perr != nil || v >= n {
		return err
	}
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: v, Max: v})
}

// loUp is `ip link set lo up` with the SIOCGIFFLAGS/SIOCSIFFLAGS ioctls:
// three syscalls, where an rtnetlink handle (socket, request, ack) ran
// several times more code before the agent could listen (new code is what
// costs under TCG, where every first-run basic block is translated).
func loUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("unable to open a socket for SIOCSIFFLAGS: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("SIOCGIFFLAGS lo: %w", err)
	}
	if ifr.Uint16()&unix.IFF_UP != 0 {
		return nil
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("SIOCSIFFLAGS lo up: %w", err)
	}
	return nil
}

// seedEntropy never blocks boot: the command-line seed is a single ioctl,
// the hwrng read runs in the background with a deadline.
func seedEntropy(cfg cmdline.Config, log *slog.Logger) {
	if len(cfg.Entropy) > 0 {
		if err := entropy.Seed(cfg.Entropy); err != nil {
			log.Warn("agent.entropy", "err", err)
		} else {
			log.Info("entropy seeded from the command line", "bytes", len(cfg.Entropy), "entropy_avail", entropy.Available())
		}
	}
	go func() {
		n, err := entropy.FromHWRNG("/dev/hwrng", HWRNGTimeout)
		switch {
		case err != nil:
			log.Warn("hwrng", "err", err)
		case n > 0:
			log.Info("entropy seeded from /dev/hwrng", "bytes", n, "entropy_avail", entropy.Available())
		}
	}()
}

// startServices opens the log stream and debug console listeners. They
// are optional: a failure is logged and boot goes on.
func startServices(ctx context.Context, res *Result, listen console.Listen) {
	cfg, log := res.Config, res.Logger
	if cfg.LogVPort != 0 {
		if ln, err := listen(cfg.LogVPort); err != nil {
			log.Warn("log stream listener", "port", cfg.LogVPort, "err", err)
		} else {
			res.Closers = append(res.Closers, ln)
			go func() { _ = res.LogStream.Serve(ln) }()
			log.Info("log stream listening", "port", cfg.LogVPort)
		}
	}
	if cfg.DebugConsoleVPort != 0 {
		if ln, err := listen(cfg.DebugConsoleVPort); err != nil {
			log.Warn("debug console listener", "port", cfg.DebugConsoleVPort, "err", err)
		} else {
			res.Closers = append(res.Closers, ln)
			go func() {
				if err := console.DebugConsole(ln, "", log); err != nil {
					log.Warn("debug console", "err", err)
				}
			}()
			log.Warn("debug console listening: anyone with vsock access gets a root shell", "port", cfg.DebugConsoleVPort)
		}
	}
	go func() {
		<-ctx.Done()
		for _, c := range res.Closers {
			c.Close()
		}
	}()
}

// Close stops the listeners started by Run.
func (r *Result) Close() {
	for _, c := range r.Closers {
		c.Close()
	}
}
