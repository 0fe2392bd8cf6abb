package console

import (
	"io"
	"log/slog"
	"net"
	"os"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// Listen opens a listener on a vsock port. Tests substitute unix sockets.
type Listen func(port uint32) (net.Listener, error)

// VsockListen listens on AF_VSOCK port for any local CID
// (VMADDR_CID_ANY, like agent.server_addr's vsock://-1:PORT); it does not
// need /dev/vsock to look up the guest's CID.
func VsockListen(port uint32) (net.Listener, error) {
	return vsock.ListenContextID(unix.VMADDR_CID_ANY, port, nil)
}

// Consoles are tried in order by OpenConsole.
var Consoles = []string{"/dev/console", "/dev/hvc0", "/dev/ttyS0"}

// OpenConsole opens the first writable console without making it the
// controlling terminal; it falls back to stderr.
func OpenConsole() *os.File {
	for _, p := range Consoles {
		fd, err := unix.Open(p, unix.O_WRONLY|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err == nil {
			return os.NewFile(uintptr(fd), p)
		}
	}
	return os.Stderr
}

// NewLogger returns a JSON slog logger at level writing to every w (wrap
// slow writers in a Sink first), and a LevelVar to change the level later.
func NewLogger(level slog.Level, w ...io.Writer) (*slog.Logger, *slog.LevelVar) {
	lv := new(slog.LevelVar)
	lv.Set(level)
	h := slog.NewJSONHandler(tee(w), &slog.HandlerOptions{Level: lv})
	return slog.New(h).With("source", "agent"), lv
}

// tee writes to every writer, ignoring their errors (one broken log
// destination must not silence the others).
type tee []io.Writer

func (t tee) Write(p []byte) (int, error) {
	for _, w := range t {
		_, _ = w.Write(p)
	}
	return len(p), nil
}
