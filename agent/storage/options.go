package storage

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// mountFlags are the options mount(8) turns into flags; everything else is
// filesystem data.
var mountFlags = map[string]struct {
	clear bool
	flag  uintptr
}{
	"ro": {false, unix.MS_RDONLY}, "rw": {true, unix.MS_RDONLY},
	"nosuid": {false, unix.MS_NOSUID}, "suid": {true, unix.MS_NOSUID},
	"nodev": {false, unix.MS_NODEV}, "dev": {true, unix.MS_NODEV},
	"noexec": {false, unix.MS_NOEXEC}, "exec": {true, unix.MS_NOEXEC},
	"sync": {false, unix.MS_SYNCHRONOUS}, "async": {true, unix.MS_SYNCHRONOUS},
	"dirsync": {false, unix.MS_DIRSYNC},
	"noatime": {false, unix.MS_NOATIME}, "atime": {true, unix.MS_NOATIME},
	"nodiratime": {false, unix.MS_NODIRATIME}, "diratime": {true, unix.MS_NODIRATIME},
	"relatime": {false, unix.MS_RELATIME}, "norelatime": {true, unix.MS_RELATIME},
	"strictatime": {false, unix.MS_STRICTATIME},
	"lazytime":    {false, unix.MS_LAZYTIME}, "nolazytime": {true, unix.MS_LAZYTIME},
	"bind": {false, unix.MS_BIND}, "rbind": {false, unix.MS_BIND | unix.MS_REC},
	"defaults": {false, 0},
}

// maxOptions bounds Storage.options (and the data string built from it).
const maxOptions = 64

// parseOptions splits Storage.options into mount flags and the data
// string. Each option is one item of the list: a comma or NUL inside an
// item would let its value smuggle in more options ("size=1m,uid=0"), so
// such items are refused, not joined.
func parseOptions(field string, opts []string) (flags uintptr, data string, err error) {
	if len(opts) > maxOptions {
		return 0, "", invalidf("%s: %d options, at most %d", field, len(opts), maxOptions)
	}
	var rest []string
	for i, o := range opts {
		if o == "" {
			continue
		}
		if strings.ContainsAny(o, ",\x00\n") || len(o) > 4096 {
			return 0, "", invalidf("%s[%d] %q: an option must not contain a comma, newline or NUL (one option per item)", field, i, trunc(o))
		}
		if f, ok := mountFlags[o]; ok {
			if f.clear {
				flags &^= f.flag
			} else {
				flags |= f.flag
			}
			continue
		}
		rest = append(rest, o)
	}
	return flags, strings.Join(rest, ","), nil
}

// optionValue returns the value of key=value in opts.
func optionValue(opts []string, key string) (string, bool) {
	for _, o := range opts {
		if v, ok := strings.CutPrefix(o, key+"="); ok {
			return v, true
		}
	}
	return "", false
}

// withoutOption drops key=... items.
func withoutOption(opts []string, key string) []string {
	out := make([]string, 0, len(opts))
	for _, o := range opts {
		if !strings.HasPrefix(o, key+"=") {
			out = append(out, o)
		}
	}
	return out
}

func hasOption(opts []string, o string) bool {
	for _, x := range opts {
		if x == o {
			return true
		}
	}
	return false
}

func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

func invalidf(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...)
}
