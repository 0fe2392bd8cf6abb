// Command keel-agent is Keel's in-guest agent. Started as PID 1 it first
// brings the guest up (init/boot: mounts, cgroups, modules, root switch,
// console and log port), configured by the kernel command line; started as
// an ordinary process ("host mode", for tests and development) it takes its
// configuration from flags. Either way it then serves the Kata-compatible
// ttrpc API on agent.server_addr (vsock://-1:1024 by default).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keelvm/keel/agent/bootgate"
	"github.com/keelvm/keel/agent/container"
	"github.com/keelvm/keel/agent/containers"
	"github.com/keelvm/keel/agent/devices"
	"github.com/keelvm/keel/agent/gcpolicy"
	"github.com/keelvm/keel/agent/hotplug"
	"github.com/keelvm/keel/agent/kernelcheck"
	"github.com/keelvm/keel/agent/metrics"
	"github.com/keelvm/keel/agent/network"
	"github.com/keelvm/keel/agent/networks"
	"github.com/keelvm/keel/agent/oom"
	"github.com/keelvm/keel/agent/passfd"
	"github.com/keelvm/keel/agent/server"
	"github.com/keelvm/keel/agent/service"
	"github.com/keelvm/keel/agent/storage"
	"github.com/keelvm/keel/agent/swap"
	"github.com/keelvm/keel/agent/uevent"
	"github.com/keelvm/keel/agent/version"
	"github.com/keelvm/keel/agent/volume"
	"github.com/keelvm/keel/init/boot"
	"github.com/keelvm/keel/init/cmdline"
	"github.com/keelvm/keel/init/reaper"
	"github.com/keelvm/keel/init/shutdown"
	"github.com/keelvm/keel/init/timeline"
)

func main() {
	// The agent's GC policy (agent/gcpolicy): adaptive GOGC 100-200 unless
	// GOGC is in the environment. Container inits never get here (they are
	// dispatched in libcontainer_init.go's init func).
	gcPolicy = gcpolicy.Start(os.LookupEnv, guestMemory())
	// The main goroutine becomes the orphan reaper (init/reaper's package
	// doc); everything else runs beside it, so no start can block reaping.
	if err := reaper.RunMain(agentMain); err != nil {
		fmt.Fprintln(os.Stderr, "keel-agent:", err)
		if os.Getpid() != 1 {
			os.Exit(1)
		}
		select {} // PID 1 never returns
	}
}

func agentMain() {
	if os.Getpid() != 1 {
		if err := run(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "keel-agent:", err)
			os.Exit(1)
		}
		return
	}
	// PID 1 must never return or panic out of main: the kernel would panic.
	// Whatever ends the agent, the guest powers off cleanly instead.
	defer shutdown.Guard()
	reason := "agent stopped"
	if err := run(nil); err != nil {
		reason = err.Error()
		slog.Error("keel-agent failed", "err", err)
	}
	_ = shutdown.PowerOff(reason)
	select {} // PowerOff does not return as PID 1; never fall off main
}

// gcPolicy is the running GC policy, nil when GOGC was given.
var gcPolicy *gcpolicy.Policy

// guestMemory is the machine's memory from sysinfo(2), which needs no /proc
// (not mounted yet when PID 1 starts); 0 if unknown.
func guestMemory() uint64 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0
	}
	return uint64(si.Totalram) * uint64(si.Unit)
}

type options struct {
	addr      string
	logLevel  slog.Level
	stateRoot string
	launch    time.Duration
}

// parseFlags reads host-mode flags on top of the cmdline defaults.
func parseFlags(args []string, def cmdline.Config) (options, error) {
	fs := flag.NewFlagSet("keel-agent", flag.ContinueOnError)
	o := options{stateRoot: defaultStateRoot}
	fs.StringVar(&o.addr, "addr", def.ServerAddr, "listen address: vsock://CID:PORT (CID -1 = any) or unix:///path (kernel cmdline: agent.server_addr)")
	level := fs.String("log-level", def.LogLevel.String(), "debug, info, warn or error (kernel cmdline: agent.log)")
	fs.StringVar(&o.stateRoot, "state-root", defaultStateRoot, "directory for container state and sandbox files")
	fs.DurationVar(&o.launch, "launch-timeout", def.LaunchProcessTimeout, "bound of a container or process start; past it the start fails with DeadlineExceeded and is rolled back (kernel cmdline: agent.launch_process_timeout)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if *showVersion {
		fmt.Printf("keel-agent %s (agent API %s)\n", version.Version, version.APIVersion)
		os.Exit(0)
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.launch <= 0 {
		return o, fmt.Errorf("--launch-timeout %v: want a positive duration", o.launch)
	}
	if !filepath.IsAbs(o.stateRoot) {
		return o, fmt.Errorf("--state-root %q: want an absolute directory", o.stateRoot)
	}
	if err := o.logLevel.UnmarshalText([]byte(*level)); err != nil {
		return o, fmt.Errorf("--log-level %q: want debug, info, warn or error", *level)
	}
	return o, nil
}

// replyDrain is how long PID 1 waits after DestroySandbox before powering
// off, so its reply is written and leaves the guest's vsock queue.
const replyDrain = 200 * time.Millisecond

// defaultStateRoot holds libcontainer state and sandbox files (tmpfs /run).
const defaultStateRoot = "/run/keel"

func run(args []string) error {
	o := options{stateRoot: defaultStateRoot}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	// boot.Start starts the reaper (it owns wait(2) from here on) and, as
	// PID 1, brings the guest up as far as serving needs (res.Finish does
	// the rest once the listener is open); in host mode it only returns
	// defaults.
	// The services it starts (log port, debug console) live as long as
	// this function: their context is not the signal context, which PID 1
	// cancels right below.
	bootCtx, bootCancel := context.WithCancel(context.Background())
	defer bootCancel()
	res, err := boot.Start(bootCtx)
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	defer res.Close()
	cfg := res.Config
	log := res.Logger
	if res.PID1 {
		// In the guest the kernel command line is the configuration, and
		// SIGTERM/SIGPWR mean power off (boot installed that handler).
		stop()
		ctx = context.Background()
	} else {
		var err error
		o, err = parseFlags(args, cfg)
		if err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil
			}
			return err
		}
		cfg.ServerAddr = o.addr
		cfg.LaunchProcessTimeout = o.launch
		res.Level.Set(o.logLevel)
	}
	slog.SetDefault(log)
	container.SetLogLevel(res.Level.Level())

	reg := metrics.New()
	registerGCMetrics(reg)
	// Hot-plugged devices (storages, devices, NICs) are awaited through one
	// uevent registry, fed by one listener opened before any RPC is served.
	uevents := uevent.NewRegistry(uevent.DefaultSysfs, cfg.HotplugTimeout)
	if ul, err := uevent.Listen(uevents, log); err != nil {
		// Waits still find devices by looking in sysfs, only later.
		log.Warn("no uevent listener: hot-plugged devices are found by polling sysfs", "err", err)
	} else {
		defer ul.Close()
	}
	// Storages (Kata's shared dir, shm, volumes, block rootfs) for the
	// sandbox's lifetime; hot-plugged disks are found through uevents.
	storages := storage.New(storage.Config{Devices: uevents, Log: log})
	reg.Gauge("keel_uevent_waiters", "RPCs waiting for a hot-plugged device.", func() float64 { return float64(uevents.Waiting()) })
	oomWatcher := oom.New()
	defer oomWatcher.Close()

	sandbox, err := container.New(container.Config{
		StateRoot:     o.stateRoot,
		SetHostname:   res.PID1,
		LaunchTimeout: cfg.LaunchProcessTimeout,
		PodNetSysctls: res.PID1,
		OOM:           oomWatcher,
		Log:           log,
	})
	if err != nil {
		return fmt.Errorf("unable to set up the container manager: %w", err)
	}
	// Stopping the guest (SIGTERM/SIGPWR, a fatal error) kills and removes
	// every container first.
	shutdown.OnStop("remove all containers", sandbox.Destroy)
	shutdown.OnStop("unmount storages", func(context.Context) error { return storages.Close() })
	reg.Gauge("keel_containers", "Containers in the sandbox.", func() float64 { return float64(len(sandbox.ContainerIDs())) })
	reg.Gauge("keel_container_processes", "Processes in the containers' cgroups.", func() float64 {
		n := 0
		for _, id := range sandbox.ContainerIDs() {
			if c, err := sandbox.Container(id); err == nil {
				if pids, err := c.Pids(); err == nil {
					n += len(pids)
				}
			}
		}
		return float64(n)
	})
	reg.Gauge("keel_reaped_processes", "Child processes reaped by the agent since it started.", func() float64 { return float64(reaper.Reaped()) })

	// The network RPCs configure the agent's own network namespace, which
	// Kata's containers share (the runtime drops their network namespace).
	// A guest without rtnetlink still serves everything else; the network
	// RPCs then answer Unavailable.
	netHandler := &networks.Handler{}
	if netw, err := network.New(network.Config{
		Devices:       network.UeventDevices{Registry: uevents},
		DeviceTimeout: cfg.HotplugTimeout,
		Log:           log,
	}); err != nil {
		log.Error("network RPCs unavailable", "err", err)
	} else {
		defer netw.Close()
		netHandler = networks.New(netw)
	}

	var pfd containers.PassFD
	if cfg.PassfdListenerPort != 0 {
		pl, err := server.Listen(fmt.Sprintf("vsock://-1:%d", cfg.PassfdListenerPort))
		if err != nil {
			return fmt.Errorf("agent.passfd_listener_port: %w", err)
		}
		l := passfd.NewListener(pl, passfd.PeerPort)
		go l.Serve(ctx)
		pfd = l
	}

	// DestroySandbox asks for the guest to end: the serving loop below
	// finishes the in-flight RPCs (so the host gets its answer) and then,
	// as PID 1, main powers off.
	destroyed := make(chan struct{})
	var destroyOnce sync.Once
	devs := &devices.Manager{Locator: devices.Uevents{Reg: uevents}}
	// The kernel check runs once, started when the boot gate opens.
	kernelReport := extraReport{kernel: kernelcheck.New(kernelcheck.Running)}
	svc := service.New(service.Handlers{
		Guest: &service.Guest{Metrics: reg, ExtraFeatures: kernelReport.extraFeatures, DeviceHandlers: devices.Types},
		Containers: containers.New(containers.Options{
			Sandbox:  sandbox,
			PassFD:   pfd,
			PipeSize: cfg.ContainerPipeSize,
			Devices:  devs,
			Storages: storages,
			Log:      log,
			OnDestroySandbox: func() {
				if res.PID1 {
					destroyOnce.Do(func() { close(destroyed) })
				}
			},
		}),
		OOM:     oomWatcher,
		Network: netHandler,
		Hotplug: &hotplug.Handler{Log: log, CPUSets: sandbox},
		Swap:    &swap.Handler{Log: log},
		SwapPCI: &swap.PCIHandler{Blocks: devs, Log: log},
		Volumes: &volume.Handler{Log: log},
		Storage: &storage.Handler{M: storages},
	})
	// Every RPC but Health waits for the end of the boot (res.Finish).
	bootDone := bootgate.New(0)
	srv, err := server.New(svc, service.Health{Boot: bootDone}, reg, log, server.WithBootGate(bootDone))
	if err != nil {
		return err
	}
	ln, err := server.Listen(cfg.ServerAddr)
	if err != nil {
		return err
	}
	timeline.Mark("listener_ready")
	log.Info("listening", "addr", cfg.ServerAddr, "version", version.Version, "pid", os.Getpid())

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, ln) }()
	// The rest of the boot runs while the host connects (init/boot.Start
	// says why); a failure fails the waiting RPCs, then powers off.
	// A Finish stuck past the gate's timeout fails the gate and powers off
	// too. The boot gauges are in place before the gate opens.
	if err := bootDone.Finish(func() error {
		if err := res.FinishReporting(bootDone.Step); err != nil {
			return err
		}
		bootDone.Step("register the boot gauges")
		for _, e := range timeline.Entries() {
			since := e.Since.Seconds()
			reg.Gauge("keel_boot_"+e.Name+"_seconds", "Guest uptime (CLOCK_BOOTTIME) at the "+e.Name+" boot milestone.", func() float64 { return since })
		}
		return nil
	}); err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	kernelReport.kernel.Start()
	select {
	case err := <-errc:
		if err != nil {
			return fmt.Errorf("serving %s: %w", cfg.ServerAddr, err)
		}
		return nil
	case <-ctx.Done():
	case <-destroyed:
		// The DestroySandbox handler signalled this just before returning;
		// its reply is sent after that. No server Shutdown here: ttrpc
		// treats a connection whose state its loop has not refreshed yet as
		// idle and closes it, reply unsent (seen as "ttrpc: closed" on the
		// host). The power-off main does next tears everything down anyway.
		log.Info("sandbox destroyed: powering off")
		time.Sleep(replyDrain)
		return nil
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	if !res.PID1 {
		// As PID 1 the power-off path runs the stop hooks; a host-mode
		// agent stopped by a signal must not leave containers behind either.
		dctx, dcancel := context.WithTimeout(context.Background(), shutdown.HookTimeout)
		defer dcancel()
		if err := sandbox.Destroy(dctx); err != nil {
			log.Warn("removing containers on exit", "err", err)
		}
	}
	return nil
}

// extraReport is what GetGuestDetails reports in AgentDetails.extra_features.
type extraReport struct {
	kernel *kernelcheck.Report
}

// extraFeatures reports the boot timeline ("keel.boot.<milestone>=<guest
// uptime in seconds>"), whether the agent's own binary is mapped by DAX
// ("keel.dax.agent_binary=true|false") and every option Keel needs that the
// running kernel lacks ("keel.kernel.missing=<FEATURE>:<OPTION>=<got>"), or
// "keel.kernel.config=unavailable" without /proc/config.gz: that check's
// one result (kernelcheck), waited for as long as ctx allows.
func (x extraReport) extraFeatures(ctx context.Context) ([]string, error) {
	var out []string
	for _, e := range timeline.Entries() {
		out = append(out, fmt.Sprintf("keel.boot.%s=%.6f", e.Name, e.Since.Seconds()))
	}
	if dax, err := binaryIsDAX(); err == nil {
		out = append(out, fmt.Sprintf("keel.dax.agent_binary=%t", dax))
	}
	kernel, err := x.kernel.Lines(ctx)
	if err != nil {
		return nil, err
	}
	return append(out, kernel...), nil
}

// binaryIsDAX says whether the running agent binary has STATX_ATTR_DAX: on
// a dax=always root the agent executes in place from the host's pages
// rather than from copies in the guest page cache.
func binaryIsDAX() (bool, error) {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, "/proc/self/exe", 0, unix.STATX_BASIC_STATS, &st); err != nil {
		return false, err
	}
	if st.Attributes_mask&unix.STATX_ATTR_DAX == 0 {
		return false, errors.New("the filesystem does not report STATX_ATTR_DAX")
	}
	return st.Attributes&unix.STATX_ATTR_DAX != 0, nil
}
