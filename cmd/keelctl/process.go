package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/keelvm/keel/protocol/addr"
	"github.com/keelvm/keel/protocol/attach"
	"github.com/keelvm/keel/protocol/client"
	pb "github.com/keelvm/keel/protocol/grpc"
	"github.com/keelvm/keel/protocol/ocispec"
)

// exitFailed is run/exec's status when keelctl or the agent failed (not
// the process): 125, as docker run, so it does not collide with the
// process's own small statuses.
const exitFailed = 125

// sandboxID is the sandbox keelctl run creates when the agent has none.
const sandboxID = "keelctl"

// env carries the process-level plumbing of one command.
type env struct {
	addr    string
	timeout time.Duration
	stdin   io.Reader
	stdout  io.Writer
	stderr  io.Writer
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// processFlags are shared by run and exec.
type processFlags struct {
	tty  bool
	envs stringList
	cwd  string
}

func (p *processFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&p.tty, "tty", false, "give the process a terminal (raw mode locally, resize followed)")
	fs.BoolVar(&p.tty, "t", false, "short for --tty")
	fs.Var(&p.envs, "env", "KEY=VALUE added to the process environment (repeatable)")
	fs.Var(&p.envs, "e", "short for --env")
	fs.StringVar(&p.cwd, "cwd", "", "working directory of the process (default /)")
}

func (p *processFlags) check() error {
	for _, e := range p.envs {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return fmt.Errorf("--env %q: want KEY=VALUE", e)
		}
	}
	return nil
}

func newFlagSet(name string, stderr io.Writer, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: keelctl %s\n", usage)
		fs.PrintDefaults()
	}
	return fs
}

// errf prints a keelctl error, rendering gRPC statuses as "Code: message".
func errf(w io.Writer, cmd string, err error) {
	if st, ok := status.FromError(err); ok {
		fmt.Fprintf(w, "keelctl %s: %s: %s\n", cmd, st.Code(), st.Message())
		return
	}
	fmt.Fprintf(w, "keelctl %s: %v\n", cmd, err)
}

// dial connects within the timeout.
func (e env) dial() (*client.Client, error) {
	if e.addr == "" {
		return nil, errors.New("no agent address: pass --addr or set KEEL_AGENT_ADDR")
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	defer cancel()
	return client.Dial(ctx, e.addr)
}

func newID(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// runCmd is `keelctl run`: sandbox if none, container, attach, exit status.
func runCmd(e env, args []string) int {
	fs := newFlagSet("run", e.stderr, "run [--tty] [--rm] --rootfs DIR [--id ID] [--env K=V] -- CMD [ARG...]")
	var pf processFlags
	pf.register(fs)
	rootfs := fs.String("rootfs", "", "container root directory, as the agent sees it (required)")
	id := fs.String("id", "", "container id (default: keelctl-<random>)")
	rm := fs.Bool("rm", false, "remove the container when it exits")
	readonly := fs.Bool("read-only", false, "mount the rootfs read-only")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if err := pf.check(); err != nil {
		fmt.Fprintln(e.stderr, "keelctl run:", err)
		return exitUsage
	}
	if *rootfs == "" || fs.NArg() == 0 {
		fmt.Fprintln(e.stderr, "keelctl run: --rootfs and a command are required")
		fs.Usage()
		return exitUsage
	}
	if *id == "" {
		*id = newID("keelctl-")
	}
	c, err := e.dial()
	if err != nil {
		errf(e.stderr, "run", err)
		return exitFailed
	}
	defer c.Close()
	ctx := context.Background()
	setup, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	// The agent serves one sandbox: make one unless a runtime did.
	if _, err := c.Agent.CreateSandbox(setup, &pb.CreateSandboxRequest{SandboxId: sandboxID}); err != nil && status.Code(err) != codes.AlreadyExists {
		errf(e.stderr, "run", fmt.Errorf("CreateSandbox: %w", err))
		return exitFailed
	}
	term := openTerminal(e.stdin, pf.tty)
	spec := ocispec.Default(*rootfs, fs.Args(), ocispec.Options{Env: pf.envs, Terminal: pf.tty, Cwd: pf.cwd, Readonly: *readonly})
	if ws, ok := term.size(); ok {
		spec.Process.ConsoleSize = &pb.Box{Height: uint32(ws.Rows), Width: uint32(ws.Cols)}
	}
	if _, err := c.Agent.CreateContainer(setup, &pb.CreateContainerRequest{ContainerId: *id, ExecId: *id, OCI: spec}); err != nil {
		errf(e.stderr, "run", err)
		return exitFailed
	}
	remove := func() error {
		rctx, rcancel := context.WithTimeout(ctx, e.timeout)
		defer rcancel()
		_, err := c.Agent.RemoveContainer(rctx, &pb.RemoveContainerRequest{ContainerId: *id})
		return err
	}
	if _, err := c.Agent.StartContainer(setup, &pb.StartContainerRequest{ContainerId: *id}); err != nil {
		errf(e.stderr, "run", err)
		_ = remove()
		return exitFailed
	}
	code, err := attachTo(ctx, c, e, term, *id, *id, pf.tty)
	if err != nil {
		errf(e.stderr, "run", err)
		code = exitFailed
	}
	if *rm {
		if err := remove(); err != nil {
			errf(e.stderr, "run", fmt.Errorf("unable to remove container %s: %w", *id, err))
			code = exitFailed
		}
	}
	return code
}

// execCmd is `keelctl exec`: a new process in a running container.
func execCmd(e env, args []string) int {
	fs := newFlagSet("exec", e.stderr, "exec [--tty] [--env K=V] ID -- CMD [ARG...]")
	var pf processFlags
	pf.register(fs)
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if err := pf.check(); err != nil {
		fmt.Fprintln(e.stderr, "keelctl exec:", err)
		return exitUsage
	}
	if fs.NArg() < 2 {
		fmt.Fprintln(e.stderr, "keelctl exec: a container id and a command are required")
		fs.Usage()
		return exitUsage
	}
	cid, argv := fs.Arg(0), fs.Args()[1:]
	if argv[0] == "--" {
		argv = argv[1:]
	}
	if len(argv) == 0 {
		fmt.Fprintln(e.stderr, "keelctl exec: a command is required after --")
		return exitUsage
	}
	c, err := e.dial()
	if err != nil {
		errf(e.stderr, "exec", err)
		return exitFailed
	}
	defer c.Close()
	ctx := context.Background()
	term := openTerminal(e.stdin, pf.tty)
	proc := ocispec.Process(argv, ocispec.Options{Env: pf.envs, Terminal: pf.tty, Cwd: pf.cwd})
	if ws, ok := term.size(); ok {
		proc.ConsoleSize = &pb.Box{Height: uint32(ws.Rows), Width: uint32(ws.Cols)}
	}
	execID := newID("exec-")
	setup, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	if _, err := c.Agent.ExecProcess(setup, &pb.ExecProcessRequest{ContainerId: cid, ExecId: execID, Process: proc}); err != nil {
		errf(e.stderr, "exec", err)
		return exitFailed
	}
	code, err := attachTo(ctx, c, e, term, cid, execID, pf.tty)
	if err != nil {
		errf(e.stderr, "exec", err)
		return exitFailed
	}
	return code
}

// attachTo streams a started process and returns its exit status as
// keelctl's own (a status above 255 cannot be an exit code).
func attachTo(ctx context.Context, c *client.Client, e env, term *terminal, cid, eid string, tty bool) (int, error) {
	o := attach.Options{ContainerID: cid, ExecID: eid, Stdin: e.stdin, Stdout: e.stdout, Stderr: e.stderr, Terminal: tty}
	sigs := make(chan os.Signal, 4)
	if tty {
		// Raw mode: ^C, ^Z, ^\ reach the process as bytes.
		if err := term.makeRaw(); err != nil {
			return 0, err
		}
		defer term.restore()
		o.Resize = term.watchResize(ctx)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGHUP)
	} else {
		signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	}
	defer signal.Stop(sigs)
	o.Signals = sigs
	st, err := attach.Run(ctx, c.Agent, o)
	if err != nil {
		return 0, err
	}
	if st < 0 || st > 255 {
		return exitFailed, fmt.Errorf("process status %d is not an exit code", st)
	}
	return int(st), nil
}

// parseSignal accepts 9, KILL or SIGKILL.
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 64 {
			return 0, fmt.Errorf("signal %d: want 1-64", n)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q", s)
}

// simpleCmd runs kill, rm and stats: one container id, one RPC.
func simpleCmd(e env, cmd string, args []string) int {
	usage := map[string]string{
		"kill":  "kill ID [SIGNAL]     (default TERM; 9, KILL and SIGKILL all work)",
		"rm":    "rm ID",
		"stats": "stats [--json] ID",
	}[cmd]
	fs := newFlagSet(cmd, e.stderr, usage)
	asJSON := false
	if cmd == "stats" {
		fs.BoolVar(&asJSON, "json", false, "print the StatsContainerResponse as JSON")
	}
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	maxArgs := 1
	if cmd == "kill" {
		maxArgs = 2
	}
	if fs.NArg() < 1 || fs.NArg() > maxArgs {
		fs.Usage()
		return exitUsage
	}
	id := fs.Arg(0)
	sig := syscall.SIGTERM
	if cmd == "kill" && fs.NArg() == 2 {
		var err error
		if sig, err = parseSignal(fs.Arg(1)); err != nil {
			fmt.Fprintln(e.stderr, "keelctl kill:", err)
			return exitUsage
		}
	}
	c, err := e.dial()
	if err != nil {
		errf(e.stderr, cmd, err)
		return exitRPC
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	defer cancel()
	switch cmd {
	case "kill":
		_, err = c.Agent.SignalProcess(ctx, &pb.SignalProcessRequest{ContainerId: id, Signal: uint32(sig)})
	case "rm":
		_, err = c.Agent.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: id})
	case "stats":
		var st *pb.StatsContainerResponse
		if st, err = c.Agent.StatsContainer(ctx, &pb.StatsContainerRequest{ContainerId: id}); err == nil {
			if asJSON {
				out, _ := protojson.MarshalOptions{Multiline: true, EmitUnpopulated: true}.Marshal(st)
				fmt.Fprintln(e.stdout, string(out))
			} else {
				printStats(e.stdout, id, st)
			}
		}
	}
	if err != nil {
		errf(e.stderr, cmd, err)
		return exitRPC
	}
	return exitOK
}

func printStats(w io.Writer, id string, st *pb.StatsContainerResponse) {
	cg := st.GetCgroupStats()
	mem := cg.GetMemoryStats().GetUsage()
	limit := "unlimited"
	if l := mem.GetLimit(); l != 0 && l < 1<<62 {
		limit = fmt.Sprintf("%.1f MiB", float64(l)/(1<<20))
	}
	fmt.Fprintf(w, "container  %s\n", id)
	fmt.Fprintf(w, "cpu        %.3f s (user %.3f s, system %.3f s)\n",
		float64(cg.GetCpuStats().GetCpuUsage().GetTotalUsage())/1e9,
		float64(cg.GetCpuStats().GetCpuUsage().GetUsageInUsermode())/1e9,
		float64(cg.GetCpuStats().GetCpuUsage().GetUsageInKernelmode())/1e9)
	fmt.Fprintf(w, "memory     %.1f MiB (max %.1f MiB, limit %s)\n", float64(mem.GetUsage())/(1<<20), float64(mem.GetMaxUsage())/(1<<20), limit)
	pidLimit := "unlimited"
	if l := cg.GetPidsStats().GetLimit(); l != 0 && l < 1<<62 {
		pidLimit = strconv.FormatUint(l, 10)
	}
	fmt.Fprintf(w, "pids       %d (limit %s)\n", cg.GetPidsStats().GetCurrent(), pidLimit)
}

// logIdle is how long `keelctl logs` without --follow waits for more
// lines before it considers the agent's backlog printed.
const logIdle = 500 * time.Millisecond

// logsCmd is `keelctl logs [--follow]`: the agent's log stream
// (agent.log_vport; the backlog, then live lines with --follow).
func logsCmd(e env, args []string) int {
	fs := newFlagSet("logs", e.stderr, "logs [--follow] [--port PORT]")
	follow := fs.Bool("follow", false, "keep printing new lines until interrupted or the guest goes away")
	fs.BoolVar(follow, "f", false, "short for --follow")
	port := fs.Uint("port", 1025, "the agent's log port (kernel cmdline agent.log_vport)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return exitUsage
	}
	a, err := addr.Parse(e.addr)
	if err != nil {
		errf(e.stderr, "logs", err)
		return exitUsage
	}
	if a.Scheme == addr.Unix {
		fmt.Fprintln(e.stderr, "keelctl logs: the log stream is a vsock port: use a vsock:// or hvsock:// address")
		return exitUsage
	}
	a.Port = uint32(*port)
	ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	conn, err := client.DialAddr(ctx, a)
	cancel()
	if err != nil {
		errf(e.stderr, "logs", err)
		return exitRPC
	}
	defer conn.Close()
	if *follow {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
		defer signal.Stop(stop)
		go func() { <-stop; conn.Close() }()
	}
	buf := make([]byte, 32<<10)
	for {
		if !*follow {
			_ = conn.SetReadDeadline(time.Now().Add(logIdle))
		}
		n, err := conn.Read(buf)
		if _, werr := e.stdout.Write(buf[:n]); werr != nil {
			return exitRPC
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return exitOK
			}
			errf(e.stderr, "logs", err)
			return exitRPC
		}
	}
}
