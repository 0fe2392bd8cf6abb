package daxtest

import (
	"bufio"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// BusyboxPath is Debian's busybox-static binary.
const BusyboxPath = "/bin/busybox"

// NVDIMMModules are what the agent needs to mount an image on `-device
// nvdimm`: the ACPI NFIT driver, the pmem block driver and both
// filesystems (crc32c for ext4's metadata checksums).
var NVDIMMModules = []string{"nfit", "nd_pmem", "ext4", "crc32c_generic", "erofs"}

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
