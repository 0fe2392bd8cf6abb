package daxtest

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/keelvm/keel/protocol/client"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/rootfs-builder/recipe"
)

// BusyboxPath is Debian's busybox-static binary.
const BusyboxPath = "/bin/busybox"

// NVDIMMModules are what the agent needs to mount an image on `-device
// nvdimm`: the ACPI NFIT driver, the pmem block driver and both
// filesystems (crc32c for ext4's metadata checksums).
var NVDIMMModules = []string{"nfit", "nd_pmem", "ext4", "crc32c_generic", "erofs"}

// InstallBusyboxRootfs makes dir a container rootfs: a static busybox with
// its applet links, the mount points the OCI spec needs (the image is
// mounted read-only, so they must exist beforehand) and passwd/group.
func InstallBusyboxRootfs(ctx context.Context, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if _, err := recipe.InstallBusybox(ctx, dir, BusyboxPath); err != nil {
		return err
	}
	for _, d := range []string{"proc", "sys", "dev", "tmp", "etc", "run", "root"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	for name, data := range map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":  "root:x:0:\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// WriteRandomFile writes size bytes of random data to path (random so no
// filesystem can store it as holes or shared blocks).
func WriteRandomFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Meminfo is /proc/meminfo in KiB, by field name.
type Meminfo map[string]int64

// ParseMeminfo reads /proc/meminfo lines ("Cached:   1234 kB").
func ParseMeminfo(s string) (Meminfo, error) {
	m := Meminfo{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("meminfo %s: %w", name, err)
		}
		m[strings.TrimSpace(name)] = v
	}
	for _, k := range []string{"Cached", "MemAvailable", "Active(file)", "Inactive(file)"} {
		if _, ok := m[k]; !ok {
			return nil, fmt.Errorf("meminfo has no %s", k)
		}
	}
	return m, nil
}

// FileLRU is Active(file) + Inactive(file): the page cache on the LRU.
func (m Meminfo) FileLRU() int64 { return m["Active(file)"] + m["Inactive(file)"] }

// RunContainer creates and starts a container from spec, reads its stdout
// until EOF, waits for it and removes it.
func RunContainer(ctx context.Context, c *client.Client, id string, spec *pb.Spec) (stdout string, status int32, err error) {
	if _, err := c.Agent.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: id, ExecId: id, OCI: spec}); err != nil {
		return "", 0, fmt.Errorf("CreateContainer %s: %w", id, err)
	}
	defer func() {
		if _, e := c.Agent.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: id}); e != nil && err == nil {
			err = fmt.Errorf("RemoveContainer %s: %w", id, e)
		}
	}()
	if _, err := c.Agent.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: id}); err != nil {
		return "", 0, fmt.Errorf("StartContainer %s: %w", id, err)
	}
	var out strings.Builder
	for {
		r, err := c.Agent.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: id, ExecId: id, Len: 64 << 10})
		if err != nil {
			return out.String(), 0, fmt.Errorf("ReadStdout %s: %w", id, err)
		}
		if len(r.Data) == 0 {
			break
		}
		out.Write(r.Data)
	}
	w, err := c.Agent.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: id, ExecId: id})
	if err != nil {
		return out.String(), 0, fmt.Errorf("WaitProcess %s: %w", id, err)
	}
	return out.String(), w.Status, nil
}
