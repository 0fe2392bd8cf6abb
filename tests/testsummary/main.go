// Command testsummary runs `go test -json ARGS...` and prints what a plain
// `go test` prints (the ok/FAIL line of every package, the output of failed
// tests), then every skipped test with its reason and a closing count:
//
//	testsummary [--] -timeout 18m -count=1 ./...
//
// It is `make test`'s front end: a skip must never go unnoticed. The exit
// status is go test's (non-zero when a test or a build failed).
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	goBin := os.Getenv("GO")
	if goBin == "" {
		goBin = "go"
	}
	cmd := exec.Command(goBin, append([]string{"test", "-json"}, args...)...)
	cmd.Stdin, cmd.Stderr = os.Stdin, os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(2)
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(2)
	}
	// Ctrl-C reaches go test through the process group; wait for it to
	// print its results rather than dying first.
	signal.Ignore(syscall.SIGINT)
	s := newSummary(os.Stdout)
	if err := s.read(out); err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
	}
	waitErr := cmd.Wait()
	s.finish()
	code := 0
	var exitErr *exec.ExitError
	switch {
	case errors.As(waitErr, &exitErr):
		code = exitErr.ExitCode()
		if code <= 0 {
			code = 1
		}
	case waitErr != nil:
		fmt.Fprintln(os.Stderr, "testsummary:", waitErr)
		code = 2
	case s.failed > 0:
		code = 1
	}
	os.Exit(code)
}

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	ImportPath string
	Test       string
	Output     string
}

type skip struct{ pkg, test, reason string }

// summary turns the event stream back into go test's plain output.
type summary struct {
	w                       io.Writer
	buf                     map[string][]string // package + "\x00" + test -> its output lines
	skips                   []skip
	passed, failed, skipped int
}

func newSummary(w io.Writer) *summary { return &summary{w: w, buf: map[string][]string{}} }

func (s *summary) read(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil || e.Action == "" {
			// Not an event (go test may print plain lines): pass it on.
			fmt.Fprintln(s.w, sc.Text())
			continue
		}
		s.handle(e)
	}
	return sc.Err()
}

func (s *summary) handle(e event) {
	key := e.Package + "\x00" + e.Test
	switch {
	case e.Action == "build-output":
		fmt.Fprint(s.w, e.Output)
	case e.Action == "output" && e.Test == "":
		// Package level: the ok/FAIL/? lines, TestMain's prints, panics.
		// "PASS" and the "=== RUN"-style framing of -json are dropped, as
		// plain go test does not print them.
		if e.Output != "PASS\n" && !strings.HasPrefix(e.Output, "=== ") {
			fmt.Fprint(s.w, e.Output)
		}
	case e.Action == "output":
		s.buf[key] = append(s.buf[key], e.Output)
	case e.Test == "":
		if e.Action == "fail" {
			// A package that failed (a timeout panics mid-test): show what
			// its unfinished tests printed.
			s.flushUnfinished(e.Package)
		}
	case e.Action == "pass":
		s.passed++
		delete(s.buf, key)
	case e.Action == "fail":
		s.failed++
		s.printFailure(s.buf[key])
		delete(s.buf, key)
	case e.Action == "skip":
		s.skipped++
		s.skips = append(s.skips, skip{e.Package, e.Test, skipReason(s.buf[key])})
		delete(s.buf, key)
	}
}

// printFailure prints a failed test's output as plain go test does: the
// "--- FAIL" line first, then what the test logged, without -json's
// "=== RUN" framing.
func (s *summary) printFailure(lines []string) {
	var head, body []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(t, "=== "):
		case strings.HasPrefix(t, "--- FAIL"):
			head = append(head, l)
		default:
			body = append(body, l)
		}
	}
	for _, l := range append(head, body...) {
		fmt.Fprint(s.w, l)
	}
}

func (s *summary) flushUnfinished(pkg string) {
	var keys []string
	for k := range s.buf {
		if strings.HasPrefix(k, pkg+"\x00") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		s.printFailure(s.buf[k])
		delete(s.buf, k)
	}
}

// skipReason is what the test logged before it skipped (t.Skip's message
// is the last of it), without go test's framing lines.
func skipReason(lines []string) string {
	var msg []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- ") {
			continue
		}
		msg = append(msg, t)
	}
	if len(msg) == 0 {
		return "(no reason given)"
	}
	return msg[len(msg)-1]
}

// finish prints the skip list and the closing count line.
func (s *summary) finish() {
	if len(s.skips) > 0 {
		fmt.Fprintf(s.w, "\nSkipped tests (%d):\n", len(s.skips))
		for _, k := range s.skips {
			fmt.Fprintf(s.w, "  SKIP %s %s: %s\n", k.pkg, k.test, k.reason)
		}
	}
	fmt.Fprintf(s.w, "\n%d passed, %d failed, %d skipped\n", s.passed, s.failed, s.skipped)
}
