// Package required is the single list of kernel options Keel's guest needs,
// with a check against a configuration or the running kernel.
//
// It is linked into the static guest agent (GetGuestDetails reports what is
// missing), so it depends on the standard library only and stays small.
// The build-side fragments must request every option listed here; a test
// in kernel-config/fragments enforces that.
package required

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Feature is a capability of the guest and the options that provide it.
// Every option must be built in (=y): Keel's guest loads no modules.
type Feature struct {
	Name    string
	Options []string // without the CONFIG_ prefix
	Why     string
}

// Missing is an option of a feature that is not built in.
type Missing struct {
	Feature string
	Option  string // without the CONFIG_ prefix
	Got     string // "n" when unset, "m" for a module
}

func (m Missing) String() string {
	how := "is not set"
	if m.Got != "n" {
		how = "=" + m.Got + " (must be =y)"
	}
	return fmt.Sprintf("%s: CONFIG_%s %s", m.Feature, m.Option, how)
}

var features = []Feature{
	{"agent-transport", []string{"NET", "VSOCKETS", "VIRTIO_VSOCKETS", "UNIX"},
		"the agent serves ttrpc on AF_VSOCK port 1024"},
	{"virtio", []string{"VIRTIO", "VIRTIO_PCI", "VIRTIO_MMIO"},
		"all devices the VMM provides are virtio, on PCI or MMIO"},
	{"dax-root", []string{"ZONE_DEVICE", "MEMORY_HOTPLUG", "MIGRATION", "DAX", "FS_DAX", "LIBNVDIMM", "BLK_DEV_PMEM", "NVDIMM_PFN", "NVDIMM_DAX", "VIRTIO_PMEM"},
		"the root filesystem is mounted with dax from /dev/pmem0 (virtio-pmem or an NVDIMM fsdax namespace)"},
	{"root-filesystems", []string{"EXT4_FS", "EROFS_FS", "OVERLAY_FS", "TMPFS", "DEVTMPFS"},
		"root images are ext4 or erofs; container rootfs is overlayfs; /run and /dev are tmpfs/devtmpfs"},
	{"shared-filesystems", []string{"FUSE_FS", "VIRTIO_FS"},
		"host directories are shared with virtio-fs"},
	{"block-storage", []string{"BLK_DEV", "VIRTIO_BLK", "SCSI_VIRTIO", "BLK_DEV_SD"},
		"blk and scsi storage drivers attach volumes"},
	{"cgroups", []string{"CGROUPS", "MEMCG", "CGROUP_SCHED", "CFS_BANDWIDTH", "CGROUP_PIDS", "CGROUP_FREEZER", "CPUSETS", "CGROUP_HUGETLB", "CGROUP_DEVICE", "CGROUP_CPUACCT", "CGROUP_BPF", "BLK_CGROUP"},
		"OCI linux.resources are enforced with cgroup controllers"},
	{"namespaces", []string{"NAMESPACES", "UTS_NS", "IPC_NS", "USER_NS", "PID_NS", "NET_NS"},
		"each container runs in its own namespaces"},
	{"seccomp", []string{"SECCOMP", "SECCOMP_FILTER"},
		"OCI linux.seccomp profiles are applied in the guest"},
	{"network", []string{"INET", "IPV6", "VIRTIO_NET", "VETH", "PACKET"},
		"interfaces and routes are configured over netlink on virtio-net"},
	{"hotplug", []string{"HOTPLUG_CPU", "MEMORY_HOTREMOVE", "HOTPLUG_PCI", "HOTPLUG_PCI_PCIE"},
		"the runtime hotplugs vCPUs, memory and PCI devices"},
	{"entropy", []string{"HW_RANDOM_VIRTIO"},
		"a fresh VM needs entropy before getrandom(2) unblocks"},
	{"console", []string{"TTY", "UNIX98_PTYS", "SERIAL_8250_CONSOLE", "VIRTIO_CONSOLE"},
		"boot logs, interactive exec and the debug console"},
	{"introspection", []string{"IKCONFIG", "IKCONFIG_PROC"},
		"this check reads /proc/config.gz at runtime"},
}

// Features returns the required features (a copy).
func Features() []Feature {
	out := make([]Feature, len(features))
	for i, f := range features {
		out[i] = f
		out[i].Options = append([]string(nil), f.Options...)
	}
	return out
}

// Check returns the required options that cfg does not build in. Keys of
// cfg are option names with or without the CONFIG_ prefix; values are as in
// a .config ("y", "m", ...). Absent keys are unset.
func Check(cfg map[string]string) []Missing {
	var out []Missing
	for _, f := range features {
		for _, o := range f.Options {
			v, ok := cfg[o]
			if !ok {
				v, ok = cfg["CONFIG_"+o]
			}
			if !ok || v == "" {
				v = "n"
			}
			if v != "y" {
				out = append(out, Missing{Feature: f.Name, Option: o, Got: v})
			}
		}
	}
	return out
}

// ConfigGz is where a kernel with IKCONFIG_PROC exposes its configuration.
const ConfigGz = "/proc/config.gz"

// ErrNotAvailable means the running kernel does not expose its config.
var ErrNotAvailable = errors.New("kernel configuration not available (" + ConfigGz + " missing: kernel built without CONFIG_IKCONFIG_PROC)")

// CheckRunning checks the running kernel's /proc/config.gz.
func CheckRunning() ([]Missing, error) {
	return CheckGzip(ConfigGz, nil)
}

// CheckGzip checks the gzipped .config at path; wrap, if not nil, wraps
// the decompressed stream (the agent's yields to other goroutines).
func CheckGzip(path string, wrap func(io.Reader) io.Reader) ([]Missing, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotAvailable
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var cfg io.Reader = zr
	if wrap != nil {
		cfg = wrap(zr)
	}
	m, err := CheckConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// CheckConfig checks the .config read from r (uncompressed): Check of
// ReadConfig, keeping only the options Check looks at.
func CheckConfig(r io.Reader) ([]Missing, error) {
	cfg, err := readWanted(r)
	if err != nil {
		return nil, err
	}
	return Check(cfg), nil
}

// wanted is the set of options Check looks at.
var wanted = func() map[string]bool {
	w := map[string]bool{}
	for _, f := range features {
		for _, o := range f.Options {
			w[o] = true
		}
	}
	return w
}()

// readWanted is ReadConfig keeping only the options Check looks at: the
// guest agent runs it under TCG, where the thousand-odd strings and map
// entries of a whole .config cost more than the scan.
func readWanted(r io.Reader) (map[string]string, error) {
	cfg := make(map[string]string, len(wanted))
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 64*1024)
	for sc.Scan() {
		rest, ok := bytes.CutPrefix(bytes.TrimSpace(sc.Bytes()), []byte("CONFIG_"))
		if !ok {
			continue
		}
		// string(k) in a map index does not allocate.
		if k, v, ok := bytes.Cut(rest, []byte("=")); ok && wanted[string(k)] {
			cfg[string(k)] = string(v)
		}
	}
	return cfg, sc.Err()
}

// ReadConfig reads the CONFIG_X=value lines of a .config; other lines are
// ignored. Keys are returned without the CONFIG_ prefix.
func ReadConfig(r io.Reader) (map[string]string, error) {
	cfg := map[string]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 64*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		rest, ok := strings.CutPrefix(line, "CONFIG_")
		if !ok {
			continue
		}
		if k, v, ok := strings.Cut(rest, "="); ok {
			cfg[k] = v
		}
	}
	return cfg, sc.Err()
}
