// Package qemu launches QEMU (TCG, q35) virtual machines for Keel's tests:
// direct kernel boot with an initramfs, serial console to a file, a QMP
// socket, guest RAM in a shared memfd so vhost-user devices (the vsock
// backend) can map it, and optional pmem (nvdimm / virtio-pmem) and
// virtio-blk devices.
//
// QEMU is started with PR_SET_PDEATHSIG=SIGKILL from a goroutine that keeps
// its OS thread for the whole life of the process (the death signal fires
// when the starting *thread* exits), so a crashed or killed test binary
// never leaves a qemu behind. Close is idempotent and safe on every path.
package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keelvm/keel/tests/vmm/qmp"
)

// Timeouts of the VM lifecycle.
const (
	// StartTimeout bounds waiting for QEMU's QMP socket when the Launch
	// context has no earlier deadline.
	StartTimeout = 30 * time.Second
	// QuitTimeout is how long Close waits after QMP quit before SIGKILL.
	QuitTimeout = 5 * time.Second
	// serialPoll is the interval at which WaitSerial rereads the log.
	serialPoll = 25 * time.Millisecond
	// logTail is how much of qemu.log / serial.log errors quote.
	logTail = 2048
)

// tempPrefix starts the name of every VM directory Launch creates:
// keel-vm-<owner pid>-<random>.
const tempPrefix = "keel-vm-"

// sweepStaleDirs removes VM directories left by test processes that died
// before they could Close (Pdeathsig took care of their QEMU, but nobody
// removed the directory). A directory whose owner pid is alive is kept.
func sweepStaleDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+"*-*"))
	for _, d := range dirs {
		rest := strings.TrimPrefix(filepath.Base(d), tempPrefix)
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			_ = os.RemoveAll(d)
		}
	}
}

// Available reports whether the QEMU binary can be found; use it to skip
// VM tests on machines without QEMU.
func Available() bool {
	_, err := exec.LookPath(Binary())
	return err == nil
}

// VM is a running (or exited) QEMU process.
type VM struct {
	cfg     Config
	dir     string
	ownDir  bool
	serial  string
	qmpPath string
	logPath string
	started time.Time

	proc *os.Process
	qmp  *qmp.Client

	done    chan struct{}
	waitErr error

	closeOnce sync.Once
	closeErr  error

	mu             sync.Mutex
	serialFinal    []byte // serial log kept after Close removed the dir
	closed         bool
	shutdownReason string
	eventsDone     chan struct{} // closed when the QMP event watcher ends
}

// Launch starts QEMU and connects to its QMP socket. ctx bounds only the
// start-up; the VM lives until it exits, Kill or Close. On error nothing is
// left behind: the process is killed and reaped and a temporary Dir removed.
func Launch(ctx context.Context, cfg Config) (_ *VM, err error) {
	cfg, sizes, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if _, err := exec.LookPath(cfg.Binary); err != nil {
		return nil, fmt.Errorf("qemu not available: %w", err)
	}
	vm := &VM{cfg: cfg, done: make(chan struct{})}
	if cfg.Dir == "" {
		sweepStaleDirs()
		if vm.dir, err = os.MkdirTemp("", fmt.Sprintf("%s%d-", tempPrefix, os.Getpid())); err != nil {
			return nil, fmt.Errorf("unable to create VM dir: %w", err)
		}
		vm.ownDir = true
	} else {
		if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
			return nil, fmt.Errorf("unable to create VM dir: %w", err)
		}
		vm.dir = cfg.Dir
	}
	defer func() {
		if err != nil {
			vm.Close()
		}
	}()
	vm.serial = filepath.Join(vm.dir, "serial.log")
	vm.qmpPath = filepath.Join(vm.dir, "qmp.sock")
	vm.logPath = filepath.Join(vm.dir, "qemu.log")
	if len(vm.qmpPath) > 107 {
		return nil, fmt.Errorf("VM dir path too long for a unix socket: %s", vm.qmpPath)
	}
	// A stale socket from an earlier VM in a reused Dir would make us talk
	// to nobody (or the wrong QEMU).
	if err := os.Remove(vm.qmpPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}

	logf, err := os.OpenFile(vm.logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(cfg.Binary, cfg.args(sizes, vm.serial, vm.qmpPath)...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	startErr := make(chan error, 1)
	go vm.run(cmd, startErr)
	if err := <-startErr; err != nil {
		close(vm.done)
		return nil, fmt.Errorf("unable to start qemu: %w", err)
	}
	vm.proc = cmd.Process
	vm.started = time.Now()

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, StartTimeout)
		defer cancel()
	}
	if vm.qmp, err = vm.dialQMP(ctx); err != nil {
		return nil, err
	}
	events, _ := vm.qmp.Subscribe()
	vm.eventsDone = make(chan struct{})
	go vm.watchEvents(events)
	return vm, nil
}

// watchEvents records why QEMU shut down. The channel closes with the QMP
// connection, i.e. when QEMU exits or Close runs.
func (vm *VM) watchEvents(events <-chan qmp.Event) {
	defer close(vm.eventsDone)
	for ev := range events {
		if ev.Name != "SHUTDOWN" {
			continue
		}
		var d struct {
			Reason string `json:"reason"`
		}
		if json.Unmarshal(ev.Data, &d) == nil {
			vm.mu.Lock()
			vm.shutdownReason = d.Reason
			vm.mu.Unlock()
		}
	}
}

// ShutdownReason returns the reason of QEMU's SHUTDOWN event, once QEMU
// has exited: "guest-shutdown" for a guest power-off, "guest-reset" for a
// reboot (with -no-reboot, also how a guest panic with panic=-1 ends),
// "host-qmp-quit" after Close, "" when QEMU died without one (killed).
// Use it to tell a clean power-off from a panic, as both exit with 0.
func (vm *VM) ShutdownReason() string {
	select {
	case <-vm.done:
		if vm.eventsDone != nil {
			// The event may still be in flight on the QMP socket.
			select {
			case <-vm.eventsDone:
			case <-time.After(QuitTimeout):
			}
		}
	default:
		return ""
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.shutdownReason
}

// run starts cmd on a thread it never gives up until QEMU has exited, so
// Pdeathsig fires only when the test process itself dies.
func (vm *VM) run(cmd *exec.Cmd, started chan<- error) {
	runtime.LockOSThread()
	if err := cmd.Start(); err != nil {
		runtime.UnlockOSThread()
		started <- err
		return
	}
	started <- nil
	err := cmd.Wait()
	runtime.UnlockOSThread()
	if err != nil {
		err = fmt.Errorf("qemu: %w%s", err, vm.logExcerpt())
	}
	vm.waitErr = err
	close(vm.done)
}

func (vm *VM) dialQMP(ctx context.Context) (*qmp.Client, error) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(vm.qmpPath); err == nil {
			c, err := qmp.Dial(ctx, vm.qmpPath)
			if err == nil {
				return c, nil
			}
			if ctx.Err() != nil {
				return nil, err
			}
		}
		select {
		case <-vm.done:
			return nil, fmt.Errorf("qemu exited during start-up: %v%s", vm.waitErr, vm.logExcerpt())
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for QMP socket: %w%s", ctx.Err(), vm.logExcerpt())
		case <-tick.C:
		}
	}
}

// logExcerpt returns the end of qemu.log for error messages.
func (vm *VM) logExcerpt() string {
	b, err := os.ReadFile(vm.logPath)
	if err != nil || len(bytes.TrimSpace(b)) == 0 {
		return ""
	}
	return "\nqemu.log: " + string(tail(b, logTail))
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// Pid is QEMU's process id.
func (vm *VM) Pid() int { return vm.proc.Pid }

// Dir is the directory holding serial.log, qemu.log and qmp.sock.
func (vm *VM) Dir() string { return vm.dir }

// Started is when the QEMU process was started.
func (vm *VM) Started() time.Time { return vm.started }

// QMP returns the connected QMP client.
func (vm *VM) QMP() *qmp.Client { return vm.qmp }

// Done is closed when QEMU has exited and been reaped.
func (vm *VM) Done() <-chan struct{} { return vm.done }

// Wait blocks until QEMU exits and returns nil for exit status 0, else an
// error wrapping the *exec.ExitError (with the end of qemu.log).
func (vm *VM) Wait() error {
	<-vm.done
	return vm.waitErr
}

// Kill sends SIGKILL to QEMU. It is a no-op once QEMU has exited.
func (vm *VM) Kill() error {
	select {
	case <-vm.done:
		return nil
	default:
	}
	if err := vm.proc.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}

// Close stops the VM (QMP quit, then SIGKILL after QuitTimeout), reaps it,
// closes QMP and removes the socket (and the Dir if Launch created it).
// It may be called any number of times, before or after Wait.
func (vm *VM) Close() error {
	vm.closeOnce.Do(func() { vm.closeErr = vm.close() })
	return vm.closeErr
}

func (vm *VM) close() error {
	if vm.proc != nil {
		select {
		case <-vm.done:
		default:
			// Without QMP (Launch failed to connect) there is nobody to ask.
			quitErr := errors.New("no QMP connection")
			if vm.qmp != nil {
				ctx, cancel := context.WithTimeout(context.Background(), QuitTimeout)
				quitErr = vm.qmp.Quit(ctx)
				cancel()
			}
			if quitErr == nil {
				select {
				case <-vm.done:
				case <-time.After(QuitTimeout):
				}
			}
			_ = vm.Kill()
			<-vm.done
		}
	}
	if vm.qmp != nil {
		vm.qmp.Close()
	}
	var errs []error
	b, err := os.ReadFile(vm.serial)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	vm.mu.Lock()
	vm.serialFinal = b
	vm.closed = true
	vm.mu.Unlock()
	if err := os.Remove(vm.qmpPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if vm.ownDir {
		if err := os.RemoveAll(vm.dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// SerialLog returns the guest console output so far (after Close, as it
// was when the VM was closed).
func (vm *VM) SerialLog() string {
	vm.mu.Lock()
	if vm.closed {
		defer vm.mu.Unlock()
		return string(vm.serialFinal)
	}
	vm.mu.Unlock()
	b, _ := os.ReadFile(vm.serial)
	return string(b)
}

// WaitSerial waits until the console output contains substr. It fails
// when ctx ends or QEMU exits without printing it; the error quotes the
// end of the console.
func (vm *VM) WaitSerial(ctx context.Context, substr string) error {
	tick := time.NewTicker(serialPoll)
	defer tick.Stop()
	for {
		if strings.Contains(vm.SerialLog(), substr) {
			return nil
		}
		select {
		case <-vm.done:
			// Read once more: QEMU may have written it just before exiting.
			if log := vm.SerialLog(); !strings.Contains(log, substr) {
				return fmt.Errorf("qemu exited (%v) before console showed %q; console tail:\n%s", vm.waitErr, substr, tail([]byte(log), logTail))
			}
			return nil
		case <-ctx.Done():
			return fmt.Errorf("waiting for %q on console: %w; console tail:\n%s", substr, ctx.Err(), tail([]byte(vm.SerialLog()), logTail))
		case <-tick.C:
		}
	}
}
