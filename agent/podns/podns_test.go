package podns

import (
	"errors"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// As in keel-agent: the main thread stays locked to the main goroutine, so
// NewIPCUTS never runs on it.
func init() { runtime.LockOSThread() }

func TestPinsAndIdentity(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("pinning namespaces needs root")
	}
	dir := t.TempDir()
	ipc, uts, err := NewIPCUTS("pinned-host")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*Pinned{ipc, uts} {
		agents, err := Is(p.Kind, p.Path)
		if err != nil || agents {
			t.Errorf("%s pin: agent's %v err %v, want a namespace of its own", p.Kind, agents, err)
		}
	}
	// The UTS pin carries the hostname: read it from inside, on a
	// thread that is thrown away afterwards.
	got := make(chan string, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(uts.Path)
		if err != nil {
			got <- err.Error()
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWUTS); err != nil {
			got <- err.Error()
			return
		}
		var u unix.Utsname
		unix.Uname(&u)
		got <- unix.ByteSliceToString(u.Nodename[:])
	}()
	if h := <-got; h != "pinned-host" {
		t.Errorf("hostname in the pinned UTS namespace %q", h)
	}
	if agents, err := Is("pid", "/proc/self/ns/pid"); err != nil || !agents {
		t.Errorf("own pid namespace: %v %v", agents, err)
	}
	if _, err := Is("ipc", uts.Path); !errors.Is(err, ErrNotNamespace) {
		t.Errorf("UTS pin as ipc: %v", err)
	}
	if _, err := Is("ipc", dir); !errors.Is(err, ErrNotNamespace) {
		t.Errorf("a directory: %v", err)
	}
	for _, p := range []*Pinned{ipc, uts} {
		if err := p.Release(); err != nil {
			t.Fatal(err)
		}
		if _, err := Is(p.Kind, p.Path); err == nil {
			t.Errorf("%s still a %s namespace after Release", p.Path, p.Kind)
		}
	}
	// Another process (a container's runc init) joins by the path.
	if p, err := PinPid(os.Getpid()); err != nil {
		t.Fatal(err)
	} else if agents, err := Is("pid", p.Path); err != nil || !agents {
		t.Errorf("pid pin of ourselves: %v %v", agents, err)
	} else {
		p.Release()
	}
}
