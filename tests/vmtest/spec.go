package vmtest

import pb "github.com/keelvm/keel/protocol/grpc"

// BusyboxSpec is the OCI spec (Kata protobuf form) of a container running
// args in rootfs, shaped like `runc spec`'s default: private pid, ipc, uts
// and mount namespaces, the usual /proc /dev /sys mounts, a small
// capability set and the masked/read-only paths.
func BusyboxSpec(rootfs string, args ...string) *pb.Spec {
	caps := []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"}
	return &pb.Spec{
		Version: "1.1.0",
		Process: &pb.Process{
			Args: args,
			Env:  []string{"PATH=/bin:/usr/bin:/sbin:/usr/sbin", "HOME=/root"},
			Cwd:  "/",
			User: &pb.User{},
			Capabilities: &pb.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
			Rlimits:         []*pb.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Root:     &pb.Root{Path: rootfs},
		Hostname: "keel-demo",
		Mounts: []*pb.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		},
		Linux: &pb.Linux{
			Namespaces:  []*pb.LinuxNamespace{{Type: "pid"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"}},
			MaskedPaths: []string{"/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"},
			ReadonlyPaths: []string{
				"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
			},
		},
	}
}
