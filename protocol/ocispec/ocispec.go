// Package ocispec builds the OCI spec (in the agent's protobuf form) of a
// plain container, for host tools such as keelctl that run a command in a
// rootfs without a bundle: `runc spec`'s defaults, minus the network
// namespace (containers share the sandbox's network, as in Kata).
package ocispec

import pb "github.com/keelvm/keel/protocol/grpc"

// Options are what a caller may set beyond the rootfs and the command.
type Options struct {
	Env      []string // KEY=VALUE, after the defaults (PATH, HOME, TERM with a tty)
	Terminal bool     // the process gets a pty
	Cwd      string   // default "/"
	Hostname string   // UTS hostname of the container; empty: the sandbox's
	Readonly bool     // mount the rootfs read-only
}

// DefaultCaps is runc spec's default capability set.
var DefaultCaps = []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}

// Default returns the spec of a container running args in rootfs (a
// directory as the agent sees it): private pid, ipc, uts and mount
// namespaces, the usual /proc, /dev, /dev/pts, /dev/shm, /sys mounts,
// runc's capability set and masked/read-only paths.
func Default(rootfs string, args []string, o Options) *pb.Spec {
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"}
	if o.Terminal {
		env = append(env, "TERM=xterm")
	}
	env = append(env, o.Env...)
	cwd := o.Cwd
	if cwd == "" {
		cwd = "/"
	}
	caps := append([]string{}, DefaultCaps...)
	return &pb.Spec{
		Version: "1.1.0",
		Process: &pb.Process{
			Terminal: o.Terminal,
			Args:     args,
			Env:      env,
			Cwd:      cwd,
			User:     &pb.User{},
			Capabilities: &pb.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
			Rlimits:         []*pb.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Root:     &pb.Root{Path: rootfs, Readonly: o.Readonly},
		Hostname: o.Hostname,
		Mounts: []*pb.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		},
		Linux: &pb.Linux{
			Namespaces:  []*pb.LinuxNamespace{{Type: "pid"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"}},
			MaskedPaths: []string{"/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"},
			ReadonlyPaths: []string{
				"/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
			},
		},
	}
}

// Process is the process part of Default, for ExecProcess.
func Process(args []string, o Options) *pb.Process {
	return Default("", args, o).Process
}
