package oom

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// ParseMemoryEvents returns the oom_kill counter of a cgroup v2
// memory.events file ("low N\nhigh N\nmax N\noom N\noom_kill N\n...").
func ParseMemoryEvents(b []byte) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := bytes.Cut(sc.Bytes(), []byte{' '})
		if !ok || string(k) != "oom_kill" {
			continue
		}
		n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("memory.events: oom_kill %q: %w", v, err)
		}
		return n, nil
	}
	return 0, errors.New("memory.events: no oom_kill line")
}

// v2Watch waits on inotify for changes of memory.events.
type v2Watch struct {
	ino  *os.File
	once sync.Once
}

func (v *v2Watch) stop() { v.once.Do(func() { v.ino.Close() }) }

func watchV2(dir string, notify func(), done func(watch), wg *sync.WaitGroup) (watch, error) {
	path := filepath.Join(dir, "memory.events")
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, path, unix.IN_MODIFY|unix.IN_DELETE_SELF); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%w: inotify %s: %v", ErrNoCgroup, path, err)
	}
	// Read the baseline after the watch exists, so no kill falls between.
	b, err := os.ReadFile(path)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%w: %v", ErrNoCgroup, err)
	}
	last, err := ParseMemoryEvents(b)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	v := &v2Watch{ino: os.NewFile(uintptr(fd), "oom-inotify")}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer done(v)
		defer v.stop()
		buf := make([]byte, 4096)
		for {
			n, err := v.ino.Read(buf)
			if err != nil {
				return // stopped
			}
			if gone(buf[:n]) {
				return
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return // the cgroup went away
			}
			cur, err := ParseMemoryEvents(b)
			if err != nil {
				continue
			}
			if cur > last {
				notify()
			}
			last = cur
		}
	}()
	return v, nil
}

// gone reports whether a batch of inotify events says the file is gone.
func gone(b []byte) bool {
	// struct inotify_event { int wd; u32 mask; u32 cookie; u32 len; char name[]; }
	for len(b) >= unix.SizeofInotifyEvent {
		mask := binary.NativeEndian.Uint32(b[4:])
		nameLen := binary.NativeEndian.Uint32(b[12:])
		if mask&(unix.IN_DELETE_SELF|unix.IN_IGNORED) != 0 {
			return true
		}
		b = b[min(len(b), unix.SizeofInotifyEvent+int(nameLen)):]
	}
	return false
}
