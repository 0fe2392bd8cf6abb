package vmtest

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keelvm/keel/protocol/client"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/protocol/passfd"
)

// logRecord is one JSON line of the agent's slog log.
type logRecord struct {
	Time   time.Time `json:"time"`
	Level  string    `json:"level"`
	Msg    string    `json:"msg"`
	Method string    `json:"method"`
	Err    string    `json:"err"`
	raw    string
}

// parseLogLines returns the agent's JSON log records found in text (the
// serial console mixes them with kernel messages, which are skipped).
func parseLogLines(text string) []logRecord {
	var out []logRecord
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if i := strings.IndexByte(line, '{'); i > 0 {
			line = line[i:] // a kernel message may share the line's start
		}
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var r logRecord
		if json.Unmarshal([]byte(line), &r) != nil || r.Msg == "" {
			continue
		}
		r.raw = line
		out = append(out, r)
	}
	return out
}

// waitLogRecord polls the serial console until match accepts a record
// beyond the first skip ones, and returns it.
func waitLogRecord(ctx context.Context, g *Guest, skip int, match func(logRecord) bool) (logRecord, error) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		recs := parseLogLines(g.VM.SerialLog())
		for i := skip; i < len(recs); i++ {
			if match(recs[i]) {
				return recs[i], nil
			}
		}
		select {
		case <-ctx.Done():
			return logRecord{}, fmt.Errorf("log record not on the serial console: %w", ctx.Err())
		case <-g.VM.Done():
			return logRecord{}, errors.New("QEMU exited before the log record appeared")
		case <-tick.C:
		}
	}
}

// clockOffset estimates guest wall clock minus host wall clock: it brackets
// a Health.Version RPC by host times and finds the agent's "rpc" debug
// record of it, stamped with the guest's clock. The true offset lies in
// [lo, hi]. (The guest clock comes from the emulated RTC, whose one-second
// resolution alone makes it up to 1 s off.) The tightest of a few tries
// is kept, so one slow RPC on a loaded host does not widen the bound.
func clockOffset(ctx context.Context, g *Guest, c *client.Client) (lo, hi time.Duration, err error) {
	for try := 0; try < 5; try++ {
		skip := len(parseLogLines(g.VM.SerialLog()))
		t0 := time.Now()
		if _, err := c.Health.Version(ctx, &pb.CheckRequest{}); err != nil {
			return 0, 0, err
		}
		t1 := time.Now()
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		r, err := waitLogRecord(wctx, g, skip, func(r logRecord) bool {
			return r.Msg == "rpc" && r.Method == "/grpc.Health/Version"
		})
		cancel()
		if err != nil {
			return 0, 0, err
		}
		if try == 0 || t1.Sub(t0) < hi-lo {
			lo, hi = r.Time.Sub(t1), r.Time.Sub(t0)
		}
		if hi-lo < 100*time.Millisecond {
			break
		}
	}
	return lo, hi, nil
}

// guestFeature returns the value of extra feature name= from GetGuestDetails.
func guestFeature(d *pb.GuestDetailsResponse, name string) (float64, bool) {
	for _, f := range d.GetAgentDetails().GetExtraFeatures() {
		if v, ok := strings.CutPrefix(f, name+"="); ok {
			x, err := strconv.ParseFloat(v, 64)
			return x, err == nil
		}
	}
	return 0, false
}

// bigStdoutResult is what one large-output container run measured.
type bigStdoutResult struct {
	Bytes    int64
	HostSum  string        // sha256 of what the host received
	Stderr   string        // the container's stderr
	Prep     time.Duration // StartContainer to the first stdout byte
	Transfer time.Duration // first stdout byte to EOF
	ExitCode int32
}

// MBps is the stdout transfer rate in MB/s (10^6 bytes).
func (r bigStdoutResult) MBps() float64 {
	return float64(r.Bytes) / 1e6 / r.Transfer.Seconds()
}

// bigFileScript makes file hold size random bytes (unless it exists),
// prints its sha256sum line on stderr and cats it to stdout; with remove
// the file is deleted afterwards. The container's /tmp is a directory of
// the initramfs rootfs, shared by containers of that rootfs.
func bigFileScript(file string, size int64, remove bool) string {
	s := fmt.Sprintf("test -f %[1]s || head -c %[2]d /dev/urandom > %[1]s && sha256sum %[1]s >&2 && cat %[1]s; rc=$?", file, size)
	if remove {
		s += "; rm -f " + file
	}
	return s + "; exit $rc"
}

// runBigStdout runs a busybox container running script and hashes its
// stdout, read over ReadStdout (1 MiB per call) or, with passfdAddr set,
// over a passfd stream; stderr is collected over ReadStderr.
func runBigStdout(ctx context.Context, c *client.Client, id, script, passfdAddr string) (res bigStdoutResult, err error) {
	req := &pb.CreateContainerRequest{ContainerId: id, ExecId: id, OCI: BusyboxSpec(ContainerRootfs, "/bin/sh", "-c", script)}
	var stream io.ReadCloser
	if passfdAddr != "" {
		conn, port, err := passfd.Dial(ctx, passfdAddr)
		if err != nil {
			return res, fmt.Errorf("passfd dial: %w", err)
		}
		defer conn.Close()
		stream = conn
		req.StdoutPort = port
	}
	if _, err := c.Agent.CreateContainer(ctx, req); err != nil {
		return res, fmt.Errorf("CreateContainer: %w", err)
	}
	defer func() {
		if _, e := c.Agent.RemoveContainer(context.WithoutCancel(ctx), &pb.RemoveContainerRequest{ContainerId: id}); e != nil && err == nil {
			err = fmt.Errorf("RemoveContainer: %w", e)
		}
	}()
	start := time.Now()
	if _, err := c.Agent.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: id}); err != nil {
		return res, fmt.Errorf("StartContainer: %w", err)
	}

	var (
		wg        sync.WaitGroup
		stderr    strings.Builder
		stderrErr error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			r, err := c.Agent.ReadStderr(ctx, &pb.ReadStreamRequest{ContainerId: id, ExecId: id, Len: 64 << 10})
			if err != nil {
				stderrErr = err
				return
			}
			if len(r.Data) == 0 {
				return
			}
			stderr.Write(r.Data)
		}
	}()

	h := sha256.New()
	var first time.Time
	if stream != nil {
		res.Bytes, first, err = copyTimed(h, stream)
	} else {
		res.Bytes, first, err = readStdoutRPC(ctx, c, id, h)
	}
	end := time.Now()
	wg.Wait()
	if err != nil {
		return res, fmt.Errorf("reading stdout: %w", err)
	}
	if stderrErr != nil {
		return res, fmt.Errorf("ReadStderr: %w", stderrErr)
	}
	w, err := c.Agent.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: id, ExecId: id})
	if err != nil {
		return res, fmt.Errorf("WaitProcess: %w", err)
	}
	res.ExitCode = w.Status
	if res.Bytes > 0 {
		res.Prep, res.Transfer = first.Sub(start), end.Sub(first)
	}
	res.HostSum = hex.EncodeToString(h.Sum(nil))
	res.Stderr = stderr.String()
	return res, nil
}

// readStdoutRPC hashes stdout read with ReadStdout until EOF (empty data).
func readStdoutRPC(ctx context.Context, c *client.Client, id string, h hash.Hash) (n int64, first time.Time, err error) {
	for {
		r, err := c.Agent.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: id, ExecId: id, Len: 1 << 20})
		if err != nil {
			return n, first, err
		}
		if len(r.Data) == 0 {
			return n, first, nil
		}
		if n == 0 {
			first = time.Now()
		}
		h.Write(r.Data)
		n += int64(len(r.Data))
	}
}

// copyTimed copies r into w until EOF and notes when the first byte came.
func copyTimed(w io.Writer, r io.Reader) (n int64, first time.Time, err error) {
	buf := make([]byte, 256<<10)
	for {
		k, err := r.Read(buf)
		if k > 0 {
			if n == 0 {
				first = time.Now()
			}
			w.Write(buf[:k])
			n += int64(k)
		}
		if errors.Is(err, io.EOF) {
			return n, first, nil
		}
		if err != nil {
			return n, first, err
		}
	}
}

// procStartTime returns field 22 (starttime) of /proc/<pid>/stat, or ""
// when no such process exists.
func procStartTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return ""
	}
	return f[19] // fields after "(comm)" start at 3: state
}

// qemuChildren lists the pids of qemu processes whose parent is this
// process.
func qemuChildren() ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		var name string
		ppid := -1
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "Name:"); ok {
				name = strings.TrimSpace(v)
			}
			if v, ok := strings.CutPrefix(sc.Text(), "PPid:"); ok {
				ppid, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		f.Close()
		if ppid == self && strings.HasPrefix(name, "qemu") {
			out = append(out, pid)
		}
	}
	return out, nil
}

// grepLog returns the agent's log records whose message contains substr.
func grepLog(g *Guest, substr string) []string {
	var out []string
	for _, r := range parseLogLines(g.VM.SerialLog()) {
		if strings.Contains(r.Msg, substr) {
			out = append(out, r.raw)
		}
	}
	return out
}
