package cpio

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/keelvm/keel/rootfs-builder/internal/atomicfile"
)

// Compression selects how BuildInitrd compresses the archive.
type Compression string

// Supported compressions. Zstd shells out to Debian's zstd binary (single
// threaded, fixed level, so the output is deterministic for one zstd
// version); gzip uses compress/gzip with an empty header (no name, no time).
const (
	None Compression = "none"
	Gzip Compression = "gzip"
	Zstd Compression = "zstd"
)

// ZstdLevel is the zstd level used for initrds. Measured on a 10 MB
// keel-agent initrd: level 9 gives 3.70 MB in 0.9 s, 12 gives 3.68 MB in
// 1.6 s, 19 gives 3.33 MB in 15 s.
const ZstdLevel = 9

// ParseCompression maps a flag value to a Compression.
func ParseCompression(s string) (Compression, error) {
	switch c := Compression(s); c {
	case None, Gzip, Zstd:
		return c, nil
	case "":
		return Gzip, nil
	}
	return "", fmt.Errorf("unknown compression %q (want none, gzip or zstd)", s)
}

// SourceDateEpoch returns SOURCE_DATE_EPOCH, or 0 when unset. A malformed
// value is an error rather than being silently ignored, because it would
// break reproducibility.
func SourceDateEpoch() (int64, error) {
	v, ok := os.LookupEnv("SOURCE_DATE_EPOCH")
	if !ok || v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid SOURCE_DATE_EPOCH %q: want a non-negative integer", v)
	}
	return n, nil
}

// Compress wraps w so that bytes written to the returned writer are
// compressed with c. Closing it flushes the compressor and waits for any
// helper process; it does not close w.
func Compress(w io.Writer, c Compression) (io.WriteCloser, error) {
	switch c {
	case None:
		return nopCloser{w}, nil
	case Gzip, "":
		// NewWriterLevel only fails for an invalid level.
		// Level 6: BestCompression is ~3x slower for ~2% smaller output.
		zw, _ := gzip.NewWriterLevel(w, gzip.DefaultCompression)
		return zw, nil
	case Zstd:
		path, err := exec.LookPath("zstd")
		if err != nil {
			return nil, fmt.Errorf("zstd compression needs the zstd binary (apt-get install zstd): %w", err)
		}
		// --no-check is not used: the kernel's unzstd verifies the checksum.
		cmd := exec.Command(path, "-q", "-c", "-T1", "-"+strconv.Itoa(ZstdLevel))
		cmd.Stdout = w
		var stderr strings.Builder
		cmd.Stderr = &stderr
		in, err := cmd.StdinPipe()
		if err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("unable to start zstd: %w", err)
		}
		return &procWriter{WriteCloser: in, cmd: cmd, stderr: &stderr}, nil
	}
	return nil, fmt.Errorf("unknown compression %q", c)
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

type procWriter struct {
	io.WriteCloser
	cmd    *exec.Cmd
	stderr *strings.Builder
}

func (p *procWriter) Close() error {
	cerr := p.WriteCloser.Close()
	if err := p.cmd.Wait(); err != nil {
		return fmt.Errorf("zstd failed: %v: %s", err, strings.TrimSpace(p.stderr.String()))
	}
	return cerr
}

// BuildInitrd writes a compressed, reproducible newc archive of entries to
// the file out. Nothing appears under out unless the whole archive was
// written and synced.
func BuildInitrd(out string, entries []Entry, c Compression, opts Options) error {
	f, err := atomicfile.Create(out, 0o644)
	if err != nil {
		return err
	}
	defer f.Abort()
	bw := bufio.NewWriterSize(f, 1<<20)
	zw, err := Compress(bw, c)
	if err != nil {
		return err
	}
	if err := WriteEntries(zw, entries, opts); err != nil {
		zw.Close()
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("unable to write %s: %w", out, err)
	}
	return f.Commit()
}
