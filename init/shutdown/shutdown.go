// Package shutdown ends the guest: it runs the registered stop hooks (the
// agent registers "stop all containers"), terminates what is left, syncs,
// unmounts everything in reverse order and calls reboot(2).
//
// Only PID 1 may power the machine off. PowerOff and Reboot check
// os.Getpid() themselves: in host mode they run the hooks and return
// ErrNotPID1 without touching reboot(2), so a host-mode agent can never
// take its host down.
//
// HandleSignals turns SIGTERM, SIGPWR and SIGINT (ctrl-alt-del) into a
// power-off when PID 1. Guard, deferred at the top of PID 1's goroutines,
// turns a panic into a logged stack trace and a clean power-off instead of
// "Kernel panic - not syncing: Attempted to kill init!".
package shutdown

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// HookTimeout bounds all stop hooks together.
var HookTimeout = 10 * time.Second

const (
	// KillGrace is how long processes get between SIGTERM and SIGKILL.
	KillGrace = time.Second
)

// ErrNotPID1 is returned by PowerOff and Reboot outside PID 1.
var ErrNotPID1 = errors.New("not PID 1: refusing to power off the machine")

// finals run just before reboot(2), after the last log line.
var finals []func()

// OnFinal registers fn to run right before reboot(2) (e.g. flushing the
// console log). It must not block for long.
func OnFinal(fn func()) {
	mu.Lock()
	finals = append(finals, fn)
	mu.Unlock()
}

type hook struct {
	name string
	fn   func(context.Context) error
}

var (
	mu     sync.Mutex
	hooks  []hook
	logger = slog.New(slog.DiscardHandler)
	once   sync.Once

	// rebootFn is reboot(2); tests replace it.
	rebootFn = unix.Reboot
	// pid is os.Getpid; tests replace it.
	pid = os.Getpid
)

// SetLogger sets the logger used while shutting down.
func SetLogger(l *slog.Logger) {
	mu.Lock()
	logger = l
	mu.Unlock()
}

// OnStop registers fn to run (in registration order, sharing HookTimeout)
// before the machine goes down.
func OnStop(name string, fn func(ctx context.Context) error) {
	mu.Lock()
	hooks = append(hooks, hook{name, fn})
	mu.Unlock()
}

// PowerOff stops the guest with LINUX_REBOOT_CMD_POWER_OFF. When PID 1 it
// does not return (except with an error if reboot(2) itself fails).
func PowerOff(reason string) error { return down(reason, unix.LINUX_REBOOT_CMD_POWER_OFF) }

// Reboot is PowerOff with LINUX_REBOOT_CMD_RESTART.
func Reboot(reason string) error { return down(reason, unix.LINUX_REBOOT_CMD_RESTART) }

func down(reason string, cmd int) error {
	mu.Lock()
	log, hs, fs := logger, append([]hook(nil), hooks...), append([]func(){}, finals...)
	mu.Unlock()
	isInit := pid() == 1
	var err error = ErrNotPID1
	once.Do(func() {
		log.Info("shutting down", "reason", reason, "pid1", isInit)
		runHooks(log, hs)
		if !isInit {
			return
		}
		killAll(log)
		unix.Sync()
		unmountAll(log, "/proc/self/mountinfo")
		unix.Sync()
		log.Info("reboot(2)", "cmd", fmt.Sprintf("%#x", cmd))
		for _, f := range fs {
			f()
		}
		err = rebootFn(cmd)
	})
	if isInit && err == ErrNotPID1 {
		// A second caller while the first is going down: wait for the end.
		select {}
	}
	if err != nil && !errors.Is(err, ErrNotPID1) {
		return fmt.Errorf("unable to reboot(%#x): %w", cmd, err)
	}
	return err
}

func runHooks(log *slog.Logger, hs []hook) {
	ctx, cancel := context.WithTimeout(context.Background(), HookTimeout)
	defer cancel()
	for _, h := range hs {
		done := make(chan error, 1)
		go func() {
			defer func() {
				if p := recover(); p != nil {
					done <- fmt.Errorf("panic: %v", p)
				}
			}()
			done <- h.fn(ctx)
		}()
		select {
		case err := <-done:
			if err != nil {
				log.Warn("stop hook failed", "hook", h.name, "err", err)
			}
		case <-ctx.Done():
			log.Warn("stop hook timed out", "hook", h.name, "timeout", HookTimeout)
			return
		}
	}
}

// killAll sends SIGTERM then SIGKILL to every other process (PID 1 only).
func killAll(log *slog.Logger) {
	if err := unix.Kill(-1, unix.SIGTERM); err == nil {
		deadline := time.Now().Add(KillGrace)
		for time.Now().Before(deadline) && othersAlive() {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if othersAlive() {
		log.Info("kill -KILL -1")
		_ = unix.Kill(-1, unix.SIGKILL)
	}
}

// othersAlive reports whether a user process other than us is still
// running. kill(-1, 0) cannot tell: it also succeeds for kernel threads,
// which have an empty /proc/PID/cmdline (as have zombies, which the reaper
// collects).
func othersAlive() bool {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return unix.Kill(-1, 0) == nil
	}
	self := strconv.Itoa(os.Getpid())
	for _, e := range ents {
		n := e.Name()
		if n == self || n[0] < '0' || n[0] > '9' {
			continue
		}
		if b, err := os.ReadFile("/proc/" + n + "/cmdline"); err == nil && len(b) > 0 {
			return true
		}
	}
	return false
}

// MountPoints returns the mount points of a mountinfo file in order,
// unescaping octal escapes ("\040" for space).
func MountPoints(mountinfo string) ([]string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) > 4 {
			out = append(out, Unescape(fs[4]))
		}
	}
	return out, sc.Err()
}

// Unescape decodes mountinfo's octal escapes.
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOct(s[i+1]) && isOct(s[i+2]) && isOct(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOct(c byte) bool { return c >= '0' && c <= '7' }

// unmountAll unmounts every mount but / in reverse order, detaching those
// that are busy, then remounts / read-only.
func unmountAll(log *slog.Logger, mountinfo string) {
	mps, err := MountPoints(mountinfo)
	if err != nil {
		log.Warn("unable to list mounts", "err", err)
		return
	}
	for i := len(mps) - 1; i >= 0; i-- {
		mp := mps[i]
		if mp == "/" {
			continue
		}
		if err := unix.Unmount(mp, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			if err2 := unix.Unmount(mp, unix.MNT_DETACH); err2 != nil {
				log.Debug("umount -l", "path", mp, "err", err2)
			}
		}
	}
	_ = unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
}

// HandleSignals powers off on SIGTERM, SIGPWR or SIGINT when PID 1. In
// host mode it does nothing (the caller's own signal handling applies).
// It returns a function that stops the handling.
func HandleSignals() (stop func()) {
	if pid() != 1 {
		return func() {}
	}
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGPWR, syscall.SIGINT)
	quit := make(chan struct{})
	go func() {
		select {
		case s := <-c:
			_ = PowerOff("signal " + s.String())
		case <-quit:
		}
	}()
	return func() { signal.Stop(c); close(quit) }
}

// Guard recovers a panic of the calling goroutine: it logs the panic and
// its stack, then powers off (PID 1) or re-panics (host mode, so the
// process dies as Go programs normally do). Use as `defer shutdown.Guard()`.
func Guard() {
	p := recover()
	if p == nil {
		return
	}
	mu.Lock()
	log := logger
	mu.Unlock()
	log.Error("panic", "value", fmt.Sprint(p), "stack", string(debug.Stack()))
	if pid() != 1 {
		panic(p)
	}
	_ = PowerOff(fmt.Sprintf("panic: %v", p))
}

// CrashOutput makes the Go runtime also write fatal errors (including
// panics in unguarded goroutines) to f, e.g. /dev/console.
func CrashOutput(f *os.File) error {
	debug.SetTraceback("all")
	return debug.SetCrashOutput(f, debug.CrashOptions{})
}
