// Package container is Keel's domain model of a Kata sandbox: the sandbox,
// its containers and their processes, on runc's libcontainer used
// in-process (cgroupfs managers, no systemd). It knows nothing of protobuf;
// agent/containers adapts it to the ttrpc AgentService.
//
// Lifecycles are explicit states (State, ProcessState). Every process is
// reaped by init/reaper, which must be started (New does it); exit statuses
// are kept until collected. Failures roll back what they created.
package container

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/keelvm/keel/agent/ociconv"
	"github.com/keelvm/keel/agent/podns"
	"github.com/keelvm/keel/agent/stdio"
	"github.com/keelvm/keel/init/kmod"
	"github.com/keelvm/keel/init/reaper"
	"github.com/opencontainers/cgroups"
	// Registers the cgroup device-rule manager libcontainer needs.
	_ "github.com/opencontainers/cgroups/devices"
	"github.com/opencontainers/runc/libcontainer"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Defaults of Config.
const (
	DefaultStateRoot    = "/run/keel"
	DefaultCgroupParent = "/keel"
	// MaxDNSLines bounds CreateSandbox's dns list.
	MaxDNSLines = 64
)

// Config configures the sandbox manager.
type Config struct {
	// StateRoot holds libcontainer's state (StateRoot/containers) and the
	// sandbox files (StateRoot/sandbox/{resolv.conf,hosts,hostname}).
	StateRoot string
	// CgroupParent is the cgroup of containers without linux.cgroupsPath.
	CgroupParent string
	// NoPivotRoot forces libcontainer's chroot mode; nil detects an
	// initramfs root (RootIsInitramfs).
	NoPivotRoot *bool
	// SetHostname applies CreateSandbox's hostname to the agent's UTS
	// namespace (true in the guest; false in host-mode tests).
	SetHostname bool
	// PodNetSysctls: the agent's network namespace is the pod's (the
	// guest's, as Kata's runtime leaves every container in it), so the
	// net.* sysctls of a container without a network namespace of its own
	// are written there, as Kata's agent does. False in host mode, where
	// they are refused rather than applied to the host.
	PodNetSysctls bool
	// LoadModules loads CreateSandbox's kernel modules; nil uses init/kmod.
	LoadModules func([]kmod.ModuleSpec) error
	// LaunchTimeout bounds CreateContainer, StartContainer and
	// ExecProcess (agent.launch_process_timeout); 0 means
	// DefaultLaunchTimeout. Past it the start fails with ErrTimeout and is
	// rolled back.
	LaunchTimeout time.Duration
	// OOM, when set, watches every container's memory cgroup from its
	// creation to its removal (agent/oom.Watcher implements it).
	OOM OOMWatcher
	Log *slog.Logger
}

// OOMWatcher is the part of agent/oom.Watcher the sandbox drives.
type OOMWatcher interface {
	WatchPaths(containerID string, cgroupPaths map[string]string) error
	Unwatch(containerID string)
}

// SandboxConfig is CreateSandbox's request.
type SandboxConfig struct {
	ID            string
	Hostname      string
	DNS           []string
	SandboxPidns  bool
	KernelModules []kmod.ModuleSpec
	// GuestHookPath holds OCI hooks found in the guest image (Kata's
	// layout, guesthooks.go) that run for every container; "" = none.
	GuestHookPath string
}

// ContainerConfig is CreateContainer's request.
type ContainerConfig struct {
	ID     string
	ExecID string // id of the init process (Kata passes one); "" = ID
	Spec   *specs.Spec
	// SpecOwned hands Spec over: CreateContainer completes it in place
	// (and the Container keeps it) instead of working on a deep copy, a
	// JSON round trip of the whole spec that a caller which built Spec
	// for this one call (the RPC edge, from the request) does not need.
	SpecOwned bool
	// SandboxPidns joins the sandbox's shared pid namespace, which is the
	// pid namespace of the sandbox's first container (Kata's semantics).
	// Without it the container gets a new pid namespace of its own.
	SandboxPidns bool
	// IO is the init process's stdio; the container owns it from now on
	// (closed on failure and on Remove).
	IO *stdio.IO
	// Commit and Rollback tie what the caller set up for the container
	// (its storages) to the create's outcome; exactly one is called when
	// set. Commit just before the container becomes visible (a Remove
	// then finds what it committed). Rollback once a failed create has
	// undone all it did: after a launch timeout that is after
	// CreateContainer returned, when the background rollback, which runs
	// inside the container's rootfs and mounts, has ended.
	Commit, Rollback func()
}

// Sandbox owns the containers of one Kata sandbox.
type Sandbox struct {
	cfg         Config
	log         *slog.Logger
	root        string // libcontainer state root
	noPivotRoot bool

	mu          sync.Mutex
	created     bool
	id          string
	hostname    string
	etcFiles    map[string]string // sandbox /etc files by container path (etcfiles.go)
	guestHooks  *specs.Hooks      // from CreateSandbox's guest_hook_path
	pidnsHolder *Container
	// Pinned pod namespaces: IPC and UTS from CreateSandbox on, pid from
	// the first container on (see package podns).
	ipcNS, utsNS, pidNS *podns.Pinned
	containers          map[string]*Container
	reserved            map[string]bool // ids being created
}

// New returns an empty sandbox manager and starts the reaper. It also sets
// GOMAXPROCS=1 in the agent's environment when unset (singleProcInits).
func New(cfg Config) (*Sandbox, error) {
	if cfg.StateRoot == "" {
		cfg.StateRoot = DefaultStateRoot
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = DefaultCgroupParent
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if err := reaper.Start(); err != nil {
		return nil, err
	}
	if err := singleProcInits(); err != nil {
		return nil, fmt.Errorf("unable to set GOMAXPROCS for container inits: %w", err)
	}
	s := &Sandbox{cfg: cfg, log: cfg.Log, root: filepath.Join(cfg.StateRoot, "containers"),
		containers: map[string]*Container{}, reserved: map[string]bool{}}
	if cfg.NoPivotRoot != nil {
		s.noPivotRoot = *cfg.NoPivotRoot
	} else {
		s.noPivotRoot = RootIsInitramfs()
	}
	if err := os.MkdirAll(s.root, 0o700); err != nil {
		return nil, fmt.Errorf("unable to create state root: %w", err)
	}
	return s, nil
}

// Create records the sandbox (Kata CreateSandbox): hostname, DNS, kernel
// modules, and creates the pod's IPC and UTS namespaces (the latter with
// the hostname) that every container joins. Storages are the caller's
// business.
func (s *Sandbox) Create(sc SandboxConfig) (retErr error) {
	if sc.ID != "" {
		if err := ValidateID("sandbox_id", sc.ID); err != nil {
			return err
		}
	}
	if len(sc.Hostname) > 64 || strings.ContainsAny(sc.Hostname, "/\x00 \n") {
		return fmt.Errorf("hostname %q: must be at most 64 bytes without '/', NUL or spaces: %w", sc.Hostname, ErrInvalid)
	}
	if len(sc.DNS) > MaxDNSLines {
		return fmt.Errorf("dns: %d lines, at most %d: %w", len(sc.DNS), MaxDNSLines, ErrInvalid)
	}
	for i, l := range sc.DNS {
		if strings.ContainsAny(l, "\n\x00") {
			return fmt.Errorf("dns[%d] %q: must be one line: %w", i, l, ErrInvalid)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.created {
		return fmt.Errorf("sandbox %q: %w", s.id, ErrExists)
	}
	if len(sc.KernelModules) > 0 {
		load := s.cfg.LoadModules
		if load == nil {
			load = func(m []kmod.ModuleSpec) error { return kmod.Load(m, s.log) }
		}
		if err := load(sc.KernelModules); err != nil {
			return fmt.Errorf("kernel_modules: %w", err)
		}
	}
	etcFiles, err := writeSandboxFiles(filepath.Join(s.cfg.StateRoot, "sandbox"), sc.Hostname, sc.DNS)
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			removeSandboxFiles(etcFiles)
		}
	}()
	var guestHooks *specs.Hooks
	if sc.GuestHookPath != "" {
		var err error
		if guestHooks, err = scanGuestHooks(sc.GuestHookPath); err != nil {
			return err
		}
	}
	if sc.Hostname != "" && s.cfg.SetHostname {
		if err := unix.Sethostname([]byte(sc.Hostname)); err != nil {
			return fmt.Errorf("unable to set hostname %q: %w", sc.Hostname, err)
		}
	}
	ipc, uts, err := podns.NewIPCUTS(sc.Hostname)
	if err != nil {
		return err
	}
	s.guestHooks = guestHooks
	s.created, s.id, s.hostname, s.etcFiles = true, sc.ID, sc.Hostname, etcFiles
	s.ipcNS, s.utsNS = ipc, uts
	return nil
}

// Destroy removes every container (killing them) and forgets the sandbox.
func (s *Sandbox) Destroy(ctx context.Context) error {
	var errs []error
	for _, id := range s.ContainerIDs() {
		if err := s.RemoveContainer(ctx, id, 0); err != nil && !errors.Is(err, ErrNotFound) {
			errs = append(errs, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	removeSandboxFiles(s.etcFiles)
	for _, p := range []*podns.Pinned{s.ipcNS, s.utsNS, s.pidNS} {
		if err := p.Release(); err != nil {
			errs = append(errs, err)
		}
	}
	s.ipcNS, s.utsNS, s.pidNS, s.pidnsHolder = nil, nil, nil, nil
	s.created, s.id, s.hostname, s.etcFiles, s.guestHooks = false, "", "", nil, nil
	return errors.Join(errs...)
}

// ContainerIDs lists the containers, sorted.
func (s *Sandbox) ContainerIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.containers))
	for id := range s.containers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Container returns a container by id.
func (s *Sandbox) Container(id string) (*Container, error) {
	if err := ValidateID("container_id", id); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, fmt.Errorf("container_id %q: no such container: %w", id, ErrNotFound)
	}
	return c, nil
}

// createFault, when set (tests), runs in CreateContainer once the pod's
// net sysctls are written: a test makes it panic.
var createFault func()

// CreateContainer creates the container and its init process, which waits
// for Start (Kata CreateContainer = runc create). On failure nothing is left
// behind: no state dir, cgroup, mount or process; cc.IO is closed.
func (s *Sandbox) CreateContainer(cc ContainerConfig) (_ *Container, retErr error) {
	// Set after a launch timeout: the rollback goes on in the background
	// and ends by unreserving the id and calling cc.Rollback.
	rollbackPending := false
	// Set just before the successful return: every other way out, a
	// panic included (recovered by the server; deferred functions run
	// while panicking, with retErr nil), rolls back.
	succeeded := false
	defer func() {
		if !succeeded && !rollbackPending && cc.Rollback != nil {
			cc.Rollback()
		}
	}()
	defer func() {
		if !succeeded && cc.IO != nil {
			cc.IO.Close()
		}
	}()
	if err := ValidateID("container_id", cc.ID); err != nil {
		return nil, err
	}
	execID := cc.ExecID
	if execID == "" {
		execID = cc.ID
	} else if err := ValidateID("exec_id", execID); err != nil {
		return nil, err
	}
	if err := ociconv.Validate(cc.Spec); err != nil {
		return nil, err
	}
	if fi, err := os.Stat(cc.Spec.Root.Path); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("OCI.root.path %q: not a directory: %w", cc.Spec.Root.Path, ErrInvalid)
	}
	if err := checkNamespacePaths(cc.Spec); err != nil {
		return nil, err
	}

	s.mu.Lock()
	if _, ok := s.containers[cc.ID]; ok || s.reserved[cc.ID] {
		s.mu.Unlock()
		return nil, fmt.Errorf("container_id %q: %w", cc.ID, ErrExists)
	}
	s.reserved[cc.ID] = true
	pod := podNamespaces{holder: s.pidnsHolder, cgroupNS: cgroups.IsCgroup2UnifiedMode()}
	if s.ipcNS != nil {
		pod.ipc, pod.uts = s.ipcNS.Path, s.utsNS.Path
	}
	if s.pidNS != nil {
		pod.pid = s.pidNS.Path
	}
	hostname, etcFiles, guestHooks := s.hostname, s.etcFiles, s.guestHooks
	s.mu.Unlock()
	unreserve := func() {
		s.mu.Lock()
		delete(s.reserved, cc.ID)
		s.mu.Unlock()
	}
	// After a launch timeout the rollback may still run in the background
	// (libcontainer's start has not returned): the id stays reserved until
	// it is done, so a retry cannot race it on the same state and cgroup.
	defer func() {
		if !rollbackPending {
			unreserve()
		}
	}()

	spec := cc.Spec
	if !cc.SpecOwned {
		var err error
		if spec, err = ociconv.Clone(cc.Spec); err != nil {
			return nil, err
		}
	}
	addGuestHooks(spec, guestHooks)
	if spec.Linux == nil {
		spec.Linux = &specs.Linux{}
	}
	if cleared := hostOnlyFields(spec.Process, "OCI.process", spec.Linux); len(cleared) > 0 {
		s.log.Info("host-only fields ignored (no such policy in the guest)", "container_id", cc.ID, "fields", cleared)
	}
	plan, err := setNamespaces(spec, pod, cc.SandboxPidns, s.log)
	if err != nil {
		return nil, err
	}
	sysctls, err := s.podNetSysctls(cc.ID, spec)
	if err != nil {
		return nil, err
	}
	// A failed create puts the pod's previous values back (after a launch
	// timeout, when the background rollback ends).
	defer func() {
		if succeeded {
			sysctls.keep()
		} else if !rollbackPending {
			sysctls.restore()
		}
	}()
	if createFault != nil {
		createFault()
	}
	privateUTS := slices.ContainsFunc(spec.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.UTSNamespace && n.Path == "" })
	if spec.Hostname == "" && privateUTS {
		spec.Hostname = hostname
	}
	addSandboxMounts(spec, etcFiles)

	cfg, err := ociconv.ToConfig(spec, ociconv.Options{ID: cc.ID, CgroupParent: s.cfg.CgroupParent, NoPivotRoot: s.noPivotRoot})
	if err != nil {
		return nil, err
	}
	lp, err := newLibcontainerProcess(spec.Process, cc.IO, true)
	if err != nil {
		return nil, err
	}
	hooks := &hookCtl{}
	boundHooks(cfg, hooks)
	lc, err := libcontainer.Create(s.root, cc.ID, cfg)
	if err != nil {
		if errors.Is(err, libcontainer.ErrExist) {
			return nil, fmt.Errorf("container_id %q: stale state in %s: %w", cc.ID, s.root, ErrExists)
		}
		return nil, fmt.Errorf("OCI: %v: %w", err, ErrInvalid)
	}
	c := &Container{id: cc.ID, lc: lc, spec: spec, privatePidns: plan.privatePid, log: s.log, state: StateCreated, execs: map[string]*Process{}, retired: map[string]*Process{}, pending: map[string]bool{}}
	c.launch = launchOpts{timeout: s.cfg.LaunchTimeout, hooks: hooks, turn: newStartTurn()}
	// The cgroup paths are fixed when libcontainer.Create makes the cgroup
	// manager: one read serves the start's kill path and the OOM watch.
	var cgroupPaths map[string]string
	if st, err := lc.State(); err == nil {
		cgroupPaths = st.CgroupPaths
		c.launch.procs = procsFile(cgroupPaths)
	}
	var p *Process
	err = launch(c.launch, fmt.Sprintf("create container %q", cc.ID), func() error {
		var err error
		p, err = startProcess(lc, lp, execID, cc.IO, c.initExited)
		return err
	}, func(startErr error) {
		if startErr == nil {
			p.killAndWait()
		}
		if derr := destroyLocked(lc); derr != nil {
			s.log.Warn("rollback of timed-out create", "container_id", cc.ID, "err", derr)
		}
		sysctls.restore()
		unreserve()
		if cc.Rollback != nil {
			cc.Rollback()
		}
	})
	if errors.Is(err, errLaunchTimeout) {
		rollbackPending = true
		return nil, err
	}
	if err != nil {
		// libcontainer killed and waited its init; remove cgroup and state.
		if derr := destroyLocked(lc); derr != nil {
			s.log.Warn("rollback of failed create", "container_id", cc.ID, "err", derr)
		}
		return nil, fmt.Errorf("unable to create container %q: %w", cc.ID, classifyStartErr(err))
	}
	c.init = p
	var pidPin *podns.Pinned
	if plan.becomesHolder {
		// Pinned while init waits for Start, so it is alive.
		if pidPin, err = podns.PinPid(p.Pid); err != nil {
			_ = c.kill(context.Background())
			if derr := c.destroy(); derr != nil {
				s.log.Warn("rollback of failed create", "container_id", cc.ID, "err", derr)
			}
			return nil, fmt.Errorf("unable to create container %q: %w", cc.ID, err)
		}
	}
	if s.cfg.OOM != nil && cgroupPaths != nil {
		if err := s.cfg.OOM.WatchPaths(cc.ID, cgroupPaths); err != nil {
			s.log.Warn("no OOM events for container", "container_id", cc.ID, "err", err)
		}
	}

	succeeded = true // from here on the container stands
	if cc.Commit != nil {
		cc.Commit()
	}
	s.mu.Lock()
	s.containers[cc.ID] = c
	if plan.becomesHolder {
		if s.pidnsHolder == nil {
			s.pidnsHolder, s.pidNS = c, pidPin
		} else if err := pidPin.Release(); err != nil { // lost a race for the first place
			s.log.Warn("unable to release a pid namespace pin", "err", err)
		}
	}
	s.mu.Unlock()
	return c, nil
}

// RemoveContainer kills the container's processes, waits for them (timeout
// 0 = without limit; else ErrTimeout and the container stays for a retry)
// and removes its cgroup, state and stdio.
func (s *Sandbox) RemoveContainer(ctx context.Context, id string, timeout time.Duration) error {
	c, err := s.Container(id)
	if err != nil {
		return err
	}
	ctx, cancel := removeTimeout(ctx, timeout)
	defer cancel()
	if err := c.kill(ctx); err != nil {
		return err
	}
	// Before the destroy: Unwatch reads the OOM counter one last time
	// (a kill's notification may still be on its way) from the cgroup.
	if s.cfg.OOM != nil {
		s.cfg.OOM.Unwatch(id)
	}
	derr := c.destroy()
	s.mu.Lock()
	if s.containers[id] == c {
		delete(s.containers, id)
	}
	var pin *podns.Pinned
	if s.pidnsHolder == c {
		pin, s.pidnsHolder, s.pidNS = s.pidNS, nil, nil
	}
	s.mu.Unlock()
	if err := pin.Release(); err != nil {
		derr = errors.Join(derr, err)
	}
	return derr
}
