package containertest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keelvm/keel/protocol/client"
)

// AgentBinary returns $KEEL_AGENT_BIN (set by make test) or builds
// keel-agent into dir with the seccomp tag, as `make agent` does.
func AgentBinary(dir string) (string, error) {
	if p := os.Getenv("KEEL_AGENT_BIN"); p != "" {
		return p, nil
	}
	p := filepath.Join(dir, "keel-agent")
	cmd := exec.Command("go", "build", "-tags", "seccomp", "-o", p, "github.com/keelvm/keel/cmd/keel-agent")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building keel-agent: %w\n%s", err, out)
	}
	return p, nil
}

// DefaultAgentStopTimeout is how long Agent.Stop waits for the agent to
// exit after SIGINT before it kills it and fails the test.
const DefaultAgentStopTimeout = 10 * time.Second

// AgentOptions configures StartAgent.
type AgentOptions struct {
	// Bin is the keel-agent binary (HostEnv.AgentBin, AgentBinary).
	Bin string
	// Wrapper runs the agent through a command (nsenter --net=..., prlimit
	// ... --).
	Wrapper []string
	// StateRoot is --state-root; default a "state" directory beside the
	// socket.
	StateRoot string
	// Args are more flags (--log-level debug, ...).
	Args []string
	// Name tells agents apart in failures when a test runs several.
	Name string
	// StopTimeout: see DefaultAgentStopTimeout.
	StopTimeout time.Duration
}

// Agent is the real keel-agent binary serving in host mode on a Unix
// socket in a test's temporary directory.
type Agent struct {
	// Addr is the address for client.Dial and keelctl --addr.
	Addr string
	// Sock is the socket's path (for raw connections).
	Sock string

	o      AgentOptions
	cmd    *exec.Cmd
	log    LockedBuffer
	exited chan struct{} // closed once the process is reaped
	stop   sync.Once

	mu      sync.Mutex
	clients []*client.Client // Dial's, closed by Stop
}

// StartAgent starts the agent. Cleanup stops it (Stop) and, if the test
// failed, logs its output.
func StartAgent(t testing.TB, o AgentOptions) *Agent {
	t.Helper()
	if o.StopTimeout == 0 {
		o.StopTimeout = DefaultAgentStopTimeout
	}
	dir := t.TempDir()
	if o.StateRoot == "" {
		o.StateRoot = filepath.Join(dir, "state")
	}
	a := &Agent{Sock: filepath.Join(dir, "agent.sock"), o: o, exited: make(chan struct{})}
	a.Addr = "unix://" + a.Sock
	argv := append(append(append([]string{}, o.Wrapper...), o.Bin, "--addr", a.Addr, "--state-root", o.StateRoot), o.Args...)
	a.cmd = exec.Command(argv[0], argv[1:]...)
	a.cmd.Stdout, a.cmd.Stderr = &a.log, &a.log
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		a.cmd.Wait()
		close(a.exited)
	}()
	t.Cleanup(func() {
		a.Stop(t)
		if t.Failed() {
			t.Logf("%s log:\n%s", a, a.Log())
		}
	})
	return a
}

// Dial connects a client within a minute (the agent may still be starting
// on a loaded machine); Stop closes it.
func (a *Agent) Dial(t testing.TB) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.Dial(ctx, a.Addr)
	if err != nil {
		t.Fatalf("dialling %s: %v", a, err)
	}
	a.mu.Lock()
	a.clients = append(a.clients, c)
	a.mu.Unlock()
	return c
}

// Stop closes Dial's clients (a pending long poll must not hold the
// agent's shutdown), sends SIGINT and waits for the agent to exit (it
// removes its containers on the way); past StopTimeout it kills it and
// fails t. Only the first call acts.
func (a *Agent) Stop(t testing.TB) {
	t.Helper()
	a.stop.Do(func() {
		a.mu.Lock()
		for _, c := range a.clients {
			c.Close()
		}
		a.mu.Unlock()
		a.cmd.Process.Signal(os.Interrupt)
		select {
		case <-a.exited:
		case <-time.After(a.o.StopTimeout):
			a.cmd.Process.Kill()
			<-a.exited
			t.Errorf("%s did not exit within %v of SIGINT", a, a.o.StopTimeout)
		}
	})
}

// Exited reports whether the agent process has exited.
func (a *Agent) Exited() bool {
	select {
	case <-a.exited:
		return true
	default:
		return false
	}
}

// String names the agent in failures: "agent" or "agent <Name>".
func (a *Agent) String() string {
	if a.o.Name == "" {
		return "agent"
	}
	return "agent " + a.o.Name
}

// Log is the agent's output so far (stdout and stderr).
func (a *Agent) Log() string { return a.log.String() }

// LockedBuffer collects a process's output while a test may read it (a
// bytes.Buffer is not safe for that).
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *LockedBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *LockedBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
