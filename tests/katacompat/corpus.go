// Package katacompat is a corpus of agent requests shaped the way Kata
// Containers' Go runtime shapes them (src/runtime/virtcontainers/
// kata_agent.go at 7c6ba40c) for a Kubernetes pod created through
// containerd's CRI plugin: a pause container and app containers of one
// pod. The shapes are written here from reading that code, not imported:
//
//   - the spec is containerd's CRI default (pkg/oci populateDefaultUnixSpec
//     plus the CRI options): the default mounts, the /etc/hosts,
//     /etc/hostname, /etc/resolv.conf, /dev/shm and /dev/termination-log
//     binds, the default capabilities, RLIMIT_NOFILE 1024, the masked and
//     read-only paths, the RuntimeDefault seccomp profile, an AppArmor
//     profile, a systemd-driver cgroupsPath, pod namespaces by path;
//   - then Kata's runtime rewrites it: handleShm (the container's /dev/shm
//     binds the sandbox shm, or becomes a private tmpfs without one),
//     handlePidNamespace (the pid namespace is stripped; a path to the
//     pause's turns into sandbox_pidns), constrainGRPCSpec (hooks dropped;
//     devices, pids, blockIO and network resources dropped; cpus/mems
//     cleared; network, cgroup and time namespaces dropped and the other
//     namespace paths emptied; SELinux labels emptied with guest SELinux
//     off, the default).
//
// Storages: Kata sends the shared-fs (virtio-fs) storage and the ephemeral
// shm storage in CreateSandbox. Pod.SandboxStorages carries them
// (SharedFSStorage, ShmStorage) and Pod.ShmSize makes every /dev/shm bind
// the sandbox shm; a Pod without them builds the requests of a Kata
// configured with shared_fs=none and no sandbox shm, the per-container files
// then arriving by CopyFile (CopyFile builds those requests).
package katacompat

import (
	"fmt"
	"os"
	"path"

	pb "github.com/keelvm/keel/protocol/grpc"
	"golang.org/x/sys/unix"
)

// Guest paths Kata's runtime uses (kata_agent.go, kata_agent's defaults).
const (
	GuestSharedDir  = "/run/kata-containers/shared/containers/"
	GuestSandboxShm = "/run/kata-containers/sandbox/shm"
	VirtioFSTag     = "kataShared"
)

// Pod describes one pod.
type Pod struct {
	ID       string // sandbox id = the pause container's id
	UID      string // pod UID, named in the kubepods slice
	Hostname string
	DNS      []string
	// Rootfs is the (guest) path of every container's rootfs; Kata would
	// give each its own shared-fs path, one busybox tree serves here.
	Rootfs string
	// SharedDir is where the per-container files (hosts, hostname,
	// resolv.conf, termination-log) are in the guest; Kata's is
	// GuestSharedDir.
	SharedDir string
	// ShareProcessNamespace is the pod's spec.shareProcessNamespace: the
	// app containers' pid namespace is the pause's (sandbox_pidns).
	ShareProcessNamespace bool
	// SandboxStorages are sent in CreateSandbox (SharedFSStorage,
	// ShmStorage); nil = shared_fs=none and no sandbox shm.
	SandboxStorages []*pb.Storage
	// UnprivilegedPorts: the pause spec carries the net sysctls containerd
	// 2 sets on every sandbox not in the host network
	// (enable_unprivileged_ports/icmp, on by default).
	UnprivilegedPorts bool
	// ShmSize > 0 means the sandbox shm exists (ShmStorage was sent) and
	// every container's /dev/shm binds it (handleShm).
	ShmSize int64
}

// SharedFSStorage is the virtio-fs share of CreateSandbox (setupStorages).
func SharedFSStorage() *pb.Storage {
	return &pb.Storage{Driver: "virtio-fs", Source: VirtioFSTag, MountPoint: GuestSharedDir, Fstype: "virtiofs"}
}

// ShmStorage is the sandbox shm of CreateSandbox (setupStorages).
func ShmStorage(size int64) *pb.Storage {
	return &pb.Storage{Driver: "ephemeral", Source: "shm", MountPoint: GuestSandboxShm, Fstype: "tmpfs",
		Options: []string{"noexec", "nosuid", "nodev", "mode=1777", fmt.Sprintf("size=%d", size)}}
}

// CreateSandbox is startSandbox's request. Kata sends sandbox_pidns =
// sandbox.sharePidNs, which Kata's agent does not use.
func (p Pod) CreateSandbox() *pb.CreateSandboxRequest {
	return &pb.CreateSandboxRequest{Hostname: p.Hostname, Dns: p.DNS, Storages: p.SandboxStorages,
		SandboxPidns: p.ShareProcessNamespace, SandboxId: p.ID}
}

// Resources are the CRI container resources of one container.
type Resources struct {
	MemoryLimit int64  // bytes; 0 = none (best effort)
	CPUShares   uint64 // 2 for best effort
	CPUQuota    int64  // 0 = none
	CPUPeriod   uint64
	OOMScoreAdj int64
}

// Files are the per-container files the CRI plugin bind-mounts, named as
// Kata's shared fs names them (<cid>-<random>-<base>); the test creates
// them under SharedDir.
func (p Pod) Files(cid string) map[string]string {
	return map[string]string{
		"/etc/hosts":           path.Join(p.SharedDir, cid+"-8f3a1c0e5b7d9f21-hosts"),
		"/etc/hostname":        path.Join(p.SharedDir, cid+"-2b6e4d8c0a1f3e57-hostname"),
		"/etc/resolv.conf":     path.Join(p.SharedDir, cid+"-c4d2e6f8a0b1c3d5-resolv.conf"),
		"/dev/termination-log": path.Join(p.SharedDir, cid+"-7e9f1a3b5c7d9e0f-termination-log"),
	}
}

// Pause is createContainer's request for the pause (sandbox) container;
// args replace /pause (the busybox rootfs has none).
func (p Pod) Pause(args ...string) *pb.CreateContainerRequest {
	spec := p.criSpec(p.ID, args, Resources{CPUShares: 2, OOMScoreAdj: -998}, true)
	if p.UnprivilegedPorts {
		spec.Linux.Sysctl = map[string]string{"net.ipv4.ip_unprivileged_port_start": "0", "net.ipv4.ping_group_range": "0 2147483647"}
	}
	return p.kataShape(p.ID, spec)
}

// App is createContainer's request for an app container of the pod.
func (p Pod) App(cid string, res Resources, args ...string) *pb.CreateContainerRequest {
	spec := p.criSpec(cid, args, res, false)
	return p.kataShape(cid, spec)
}

// kataShape applies what Kata's runtime does to a CRI spec
// (createContainer: handleShm, handlePidNamespace, constrainGRPCSpec).
func (p Pod) kataShape(cid string, spec *pb.Spec) *pb.CreateContainerRequest {
	// handleShm
	for _, m := range spec.Mounts {
		if m.Destination != "/dev/shm" {
			continue
		}
		if p.ShmSize > 0 {
			m.Type, m.Source, m.Options = "bind", GuestSandboxShm, []string{"rbind"}
		} else {
			m.Type, m.Source, m.Options = "tmpfs", "shm", []string{"noexec", "nosuid", "nodev", "mode=1777", fmt.Sprintf("size=%d", 64<<20)}
		}
	}
	// handlePidNamespace
	sharedPidNs := false
	for i, ns := range spec.Linux.Namespaces {
		if ns.Type == "pid" {
			sharedPidNs = ns.Path != ""
			spec.Linux.Namespaces = append(spec.Linux.Namespaces[:i], spec.Linux.Namespaces[i+1:]...)
			break
		}
	}
	// constrainGRPCSpec (passSeccomp, guest SELinux disabled, no VFIO,
	// one NUMA node)
	spec.Hooks = nil
	if spec.Process.SelinuxLabel != "" {
		spec.Process.SelinuxLabel, spec.Linux.MountLabel = "", ""
	}
	r := spec.Linux.Resources
	r.Devices, r.Pids, r.BlockIO, r.Network = nil, nil, nil, nil
	if r.CPU != nil {
		r.CPU.Cpus, r.CPU.Mems = "", ""
	}
	var nss []*pb.LinuxNamespace
	for _, ns := range spec.Linux.Namespaces {
		switch ns.Type {
		case "cgroup", "network", "time":
		default:
			ns.Path = ""
			nss = append(nss, ns)
		}
	}
	spec.Linux.Namespaces = nss
	return &pb.CreateContainerRequest{ContainerId: cid, ExecId: cid, OCI: spec, SandboxPidns: sharedPidNs}
}

// criSpec is containerd's CRI spec for a container of the pod.
func (p Pod) criSpec(cid string, args []string, res Resources, sandbox bool) *pb.Spec {
	caps := []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
		"CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"}
	files := p.Files(cid)
	mounts := []*pb.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
		{Destination: "/dev/shm", Type: "bind", Source: "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/" + p.ID + "/shm", Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}},
	}
	if !sandbox {
		mounts = append(mounts,
			&pb.Mount{Destination: "/etc/hosts", Type: "bind", Source: files["/etc/hosts"], Options: []string{"rbind", "rprivate", "rw"}},
			&pb.Mount{Destination: "/dev/termination-log", Type: "bind", Source: files["/dev/termination-log"], Options: []string{"rbind", "rprivate", "rw"}},
			&pb.Mount{Destination: "/etc/hostname", Type: "bind", Source: files["/etc/hostname"], Options: []string{"rbind", "rprivate", "rw"}},
			&pb.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: files["/etc/resolv.conf"], Options: []string{"rbind", "rprivate", "rw"}},
		)
	}
	pauseNS := func(kind string) string { return "/proc/4242/ns/" + kind }
	nss := []*pb.LinuxNamespace{{Type: "pid"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"}, {Type: "network", Path: "/var/run/netns/cni-1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"}}
	if !sandbox {
		nss[1].Path, nss[2].Path = pauseNS("ipc"), pauseNS("uts")
		if p.ShareProcessNamespace {
			nss[0].Path = pauseNS("pid")
		}
	}
	cpu := &pb.LinuxCPU{Shares: res.CPUShares, Quota: res.CPUQuota, Period: res.CPUPeriod, Cpus: "0-1", Mems: "0"}
	qos := "besteffort"
	if res.MemoryLimit > 0 {
		qos = "burstable"
	}
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=" + p.Hostname,
		"KUBERNETES_SERVICE_HOST=10.96.0.1", "KUBERNETES_SERVICE_PORT=443"}
	return &pb.Spec{
		Version: "1.1.0",
		Process: &pb.Process{
			User: &pb.User{}, Args: args, Env: env, Cwd: "/",
			Capabilities:    &pb.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps},
			Rlimits:         []*pb.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: !sandbox,
			ApparmorProfile: "cri-containerd.apparmor.d",
			OOMScoreAdj:     res.OOMScoreAdj,
		},
		Root:     &pb.Root{Path: p.Rootfs, Readonly: sandbox},
		Hostname: p.Hostname,
		Mounts:   mounts,
		Annotations: map[string]string{
			"io.kubernetes.cri.container-type": map[bool]string{true: "sandbox", false: "container"}[sandbox],
			"io.kubernetes.cri.sandbox-id":     p.ID,
			"io.kubernetes.cri.sandbox-uid":    p.UID,
		},
		Linux: &pb.Linux{
			Resources: &pb.LinuxResources{
				Devices: []*pb.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
				Memory:  &pb.LinuxMemory{Limit: res.MemoryLimit},
				CPU:     cpu,
				Pids:    &pb.LinuxPids{Limit: 4096},
			},
			CgroupsPath:   fmt.Sprintf("kubepods-%s-pod%s.slice:cri-containerd:%s", qos, p.UID, cid),
			Namespaces:    nss,
			Seccomp:       RuntimeDefaultSeccomp(),
			MaskedPaths:   []string{"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
}

// RuntimeDefaultSeccomp is the shape of containerd's RuntimeDefault
// profile (contrib/seccomp DefaultProfile): deny by default with EPERM,
// the three x86 architectures, one allow list, and personality allowed
// for its few harmless values only. The allow list is the profile's
// unconditional one minus the rarely used names; what matters here is
// that a filter of that shape is in force.
func RuntimeDefaultSeccomp() *pb.LinuxSeccomp {
	allow := []string{
		"accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "capget", "capset", "chdir", "chmod", "chown",
		"clock_adjtime", "clock_getres", "clock_gettime", "clock_nanosleep", "clone", "clone3", "close", "close_range",
		"connect", "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl",
		"epoll_pwait", "epoll_pwait2", "epoll_wait", "eventfd", "eventfd2", "execve", "execveat", "exit", "exit_group",
		"faccessat", "faccessat2", "fadvise64", "fallocate", "fchdir", "fchmod", "fchmodat", "fchown", "fchownat",
		"fcntl", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr", "fsetxattr", "fstat",
		"fstatfs", "fsync", "ftruncate", "futex", "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid",
		"geteuid", "getgid", "getgroups", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid",
		"getpriority", "getrandom", "getresgid", "getresuid", "getrlimit", "get_robust_list", "getrusage", "getsid",
		"getsockname", "getsockopt", "get_thread_area", "gettid", "gettimeofday", "getuid", "getxattr", "inotify_add_watch",
		"inotify_init", "inotify_init1", "inotify_rm_watch", "ioctl", "ioprio_get", "ioprio_set", "ipc", "kill",
		"lchown", "lgetxattr", "link", "linkat", "listen", "listxattr", "llistxattr", "lremovexattr", "lseek",
		"lsetxattr", "lstat", "madvise", "membarrier", "memfd_create", "mincore", "mkdir", "mkdirat", "mknod", "mknodat",
		"mlock", "mlock2", "mlockall", "mmap", "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
		"mq_timedsend", "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall",
		"munmap", "nanosleep", "newfstatat", "open", "openat", "openat2", "pause", "pidfd_open", "pidfd_send_signal",
		"pipe", "pipe2", "poll", "ppoll", "prctl", "pread64", "preadv", "preadv2", "prlimit64", "pselect6", "pwrite64",
		"pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recvfrom", "recvmmsg", "recvmsg",
		"remap_file_pages", "removexattr", "rename", "renameat", "renameat2", "restart_syscall", "rmdir", "rseq",
		"rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
		"rt_sigtimedwait", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr", "sched_getparam",
		"sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler", "sched_rr_get_interval",
		"sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "select", "semctl",
		"semget", "semop", "semtimedop", "sendfile", "sendmmsg", "sendmsg", "sendto", "setfsgid", "setfsuid", "setgid",
		"setgroups", "setitimer", "setpgid", "setpriority", "setregid", "setresgid", "setresuid", "setreuid", "setrlimit",
		"set_robust_list", "setsid", "setsockopt", "set_thread_area", "set_tid_address", "setuid", "setxattr", "shmat",
		"shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "socket", "socketpair",
		"splice", "stat", "statfs", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo",
		"tee", "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime", "timer_settime",
		"timerfd_create", "timerfd_gettime", "timerfd_settime", "times", "tkill", "truncate", "umask", "uname",
		"unlink", "unlinkat", "utime", "utimensat", "utimes", "vfork", "wait4", "waitid", "write", "writev",
		"arch_prctl", "chroot", "modify_ldt",
	}
	var personality []*pb.LinuxSyscall
	for _, v := range []uint64{0x0, 0x0008, 0x20000, 0x20008, 0xffffffff} {
		personality = append(personality, &pb.LinuxSyscall{Names: []string{"personality"}, Action: "SCMP_ACT_ALLOW",
			Args: []*pb.LinuxSeccompArg{{Index: 0, Value: v, Op: "SCMP_CMP_EQ"}}})
	}
	return &pb.LinuxSeccomp{
		DefaultAction: "SCMP_ACT_ERRNO",
		Architectures: []string{"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"},
		Syscalls:      append([]*pb.LinuxSyscall{{Names: allow, Action: "SCMP_ACT_ALLOW"}}, personality...),
	}
}

// KataDirMode is the dir_mode Kata's runtime sends in CopyFile: a Go
// os.FileMode with Go's directory bit (virtcontainers.DirMode).
const KataDirMode = uint32(os.FileMode(0o750) | os.ModeDir)

// copyChunk is Kata's grpcMaxDataSize.
const copyChunk = 1 << 20

// CopyFile is copyFile's requests for a regular file (shared_fs=none):
// file_mode is the source's st_mode, dir_mode KataDirMode, the data in
// 1 MiB chunks at their offsets (one request when empty).
func CopyFile(dst string, data []byte, perm uint32, uid, gid int32) []*pb.CopyFileRequest {
	base := func() *pb.CopyFileRequest {
		return &pb.CopyFileRequest{Path: dst, DirMode: KataDirMode, FileMode: unix.S_IFREG | perm, Uid: uid, Gid: gid, FileSize: int64(len(data))}
	}
	if len(data) == 0 {
		return []*pb.CopyFileRequest{base()}
	}
	var reqs []*pb.CopyFileRequest
	for off := 0; off < len(data); off += copyChunk {
		r := base()
		r.Offset = int64(off)
		r.Data = data[off:min(off+copyChunk, len(data))]
		reqs = append(reqs, r)
	}
	return reqs
}
