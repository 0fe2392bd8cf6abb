// Command keelctl drives a Keel (or Kata) agent from the host, in the spirit
// of ctr and Kata's agent-ctl:
//
//	keelctl --addr ADDR run [--tty] [--rm] --rootfs DIR [--id ID] [--env K=V] -- CMD...
//	keelctl --addr ADDR exec [--tty] ID -- CMD...
//	keelctl --addr ADDR kill ID [SIGNAL] | rm ID | stats [--json] ID | logs [--follow]
//	keelctl --addr ADDR health | version | guest-details | metrics | rpcs
//	keelctl --addr ADDR call RPC [--json '{...}']
//
// run and exec stream the process's stdout and stderr live, forward stdin,
// follow the terminal's size with --tty and exit with the process's status
// (125 when keelctl or the agent failed). "call" sends any
// grpc.AgentService request written as protobuf JSON and prints the
// response as JSON. Exit status of the other commands: 0 success, 1 the RPC
// (or the connection) failed, 2 usage error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/keelvm/keel/protocol/client"
	pb "github.com/keelvm/keel/protocol/grpc"
)

const (
	exitOK    = 0
	exitRPC   = 1
	exitUsage = 2
)

const usage = `usage: keelctl [--addr ADDR] [--timeout D] COMMAND

commands:
  run [--tty] [--rm] --rootfs DIR [--id ID] [--env K=V] [--cwd DIR] [--read-only] -- CMD [ARG...]
                           run CMD in a new container (a sandbox is created if the agent has
                           none): output streamed live, stdin forwarded, keelctl exits with
                           CMD's status (125: keelctl or the agent failed)
  exec [--tty] [--env K=V] ID -- CMD [ARG...]
                           run CMD in running container ID, same streams and status as run
  kill ID [SIGNAL]         signal the container's init process (default TERM)
  rm ID                    remove a container (stopping it)
  stats [--json] ID        CPU, memory and pids of a container
  logs [--follow] [--port PORT]
                           the agent's log (vsock port agent.log_vport, default 1025)
  health                   grpc.Health/Check
  version                  grpc.Health/Version
  guest-details            AgentService.GetGuestDetails (memory block size, probe, agent details)
  metrics                  AgentService.GetMetrics, as Prometheus text
  rpcs                     list the AgentService RPCs and their request types
  call RPC [--json JSON]   send any AgentService request as protobuf JSON ("-" reads stdin)

ADDR: vsock://CID:PORT, hvsock:///path/to/uds:PORT or unix:///path
      (default $KEEL_AGENT_ADDR)
`

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("keelctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	address := fs.String("addr", os.Getenv("KEEL_AGENT_ADDR"), "agent address")
	timeout := fs.Duration("timeout", 30*time.Second, "give up connecting and calling after this long")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	e := env{addr: *address, timeout: *timeout, stdin: stdin, stdout: stdout, stderr: stderr}
	switch cmd {
	case "run":
		return runCmd(e, rest)
	case "exec":
		return execCmd(e, rest)
	case "kill", "rm", "stats":
		return simpleCmd(e, cmd, rest)
	case "logs":
		return logsCmd(e, rest)
	}

	if cmd == "rpcs" {
		svc := pb.File_agent_proto.Services().ByName("AgentService")
		for i := 0; i < svc.Methods().Len(); i++ {
			m := svc.Methods().Get(i)
			fmt.Fprintf(stdout, "%-32s %s -> %s\n", m.Name(), m.Input().FullName(), m.Output().FullName())
		}
		return exitOK
	}

	var call func(ctx context.Context, c *client.Client) (proto.Message, error)
	switch cmd {
	case "health":
		call = func(ctx context.Context, c *client.Client) (proto.Message, error) {
			return c.Health.Check(ctx, &pb.CheckRequest{})
		}
	case "version":
		call = func(ctx context.Context, c *client.Client) (proto.Message, error) {
			return c.Health.Version(ctx, &pb.CheckRequest{})
		}
	case "metrics":
		call = func(ctx context.Context, c *client.Client) (proto.Message, error) {
			return c.Agent.GetMetrics(ctx, &pb.GetMetricsRequest{})
		}
	case "guest-details":
		call = func(ctx context.Context, c *client.Client) (proto.Message, error) {
			return c.Agent.GetGuestDetails(ctx, &pb.GuestDetailsRequest{MemBlockSize: true, MemHotplugProbe: true})
		}
	case "call":
		req, method, err := parseCall(rest, stdin)
		if err != nil {
			fmt.Fprintln(stderr, "keelctl call:", err)
			return exitUsage
		}
		call = func(ctx context.Context, c *client.Client) (proto.Message, error) {
			resp, err := newMessage(method.Output())
			if err != nil {
				return nil, err
			}
			err = c.TTRPC().Call(ctx, "grpc.AgentService", string(method.Name()), req, resp)
			return resp, err
		}
	default:
		fmt.Fprintf(stderr, "keelctl: unknown command %q\n%s", cmd, usage)
		return exitUsage
	}
	if cmd != "call" && len(rest) > 0 {
		fmt.Fprintf(stderr, "keelctl %s: unexpected argument %q\n", cmd, rest[0])
		return exitUsage
	}
	if *address == "" {
		fmt.Fprintln(stderr, "keelctl: no agent address: pass --addr or set KEEL_AGENT_ADDR")
		return exitUsage
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	c, err := client.Dial(ctx, *address)
	if err != nil {
		fmt.Fprintln(stderr, "keelctl:", err)
		return exitRPC
	}
	defer c.Close()
	resp, err := call(ctx, c)
	if err != nil {
		if st, ok := status.FromError(err); ok {
			fmt.Fprintf(stderr, "keelctl: %s failed: %s: %s\n", cmd, st.Code(), st.Message())
		} else {
			fmt.Fprintf(stderr, "keelctl: %s failed: %v\n", cmd, err)
		}
		return exitRPC
	}
	if m, ok := resp.(*pb.Metrics); ok {
		// Prometheus text reads better raw than as an escaped JSON string.
		fmt.Fprint(stdout, m.GetMetrics())
		return exitOK
	}
	out, err := protojson.MarshalOptions{Multiline: true, EmitUnpopulated: true}.Marshal(resp)
	if err != nil {
		fmt.Fprintln(stderr, "keelctl: unable to render the response:", err)
		return exitRPC
	}
	fmt.Fprintln(stdout, string(out))
	return exitOK
}

// parseCall resolves "RPC [--json JSON]" into a request message.
func parseCall(args []string, stdin io.Reader) (proto.Message, protoreflect.MethodDescriptor, error) {
	if len(args) == 0 {
		return nil, nil, errors.New("missing RPC name (see `keelctl rpcs`)")
	}
	name := args[0]
	fs := flag.NewFlagSet("call", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	body := fs.String("json", "{}", "request as protobuf JSON, - for stdin")
	if err := fs.Parse(args[1:]); err != nil {
		return nil, nil, err
	}
	if fs.NArg() > 0 {
		return nil, nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	method := pb.File_agent_proto.Services().ByName("AgentService").Methods().ByName(protoreflect.Name(name))
	if method == nil {
		return nil, nil, fmt.Errorf("unknown RPC %q (see `keelctl rpcs`)", name)
	}
	text := *body
	if text == "-" {
		b, err := io.ReadAll(stdin)
		if err != nil {
			return nil, nil, fmt.Errorf("unable to read the request from stdin: %w", err)
		}
		text = string(b)
	}
	req, err := newMessage(method.Input())
	if err != nil {
		return nil, nil, err
	}
	if err := protojson.Unmarshal([]byte(strings.TrimSpace(text)), req); err != nil {
		return nil, nil, fmt.Errorf("--json is not a valid %s: %v", method.Input().FullName(), err)
	}
	return req, method, nil
}

func newMessage(d protoreflect.MessageDescriptor) (proto.Message, error) {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(d.FullName())
	if err != nil {
		return nil, fmt.Errorf("unable to find message type %s: %w", d.FullName(), err)
	}
	return mt.New().Interface(), nil
}
