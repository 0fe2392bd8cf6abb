// Command keel-agent is Keel's in-guest agent. Started as PID 1 it first
// brings the guest up (init/...); either way it then serves the Kata-
// compatible ttrpc API on agent.server_addr (vsock://-1:1024 by default).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/keelvm/keel/agent/metrics"
	"github.com/keelvm/keel/agent/server"
	"github.com/keelvm/keel/agent/service"
	"github.com/keelvm/keel/agent/version"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "keel-agent:", err)
		os.Exit(1)
	}
}

type options struct {
	addr     string
	logLevel slog.Level
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("keel-agent", flag.ContinueOnError)
	o := options{}
	fs.StringVar(&o.addr, "addr", server.DefaultAddr, "listen address: vsock://CID:PORT (CID -1 = any) or unix:///path (kernel cmdline: agent.server_addr)")
	level := fs.String("log-level", "info", "debug, info, warn or error (kernel cmdline: agent.log)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if *showVersion {
		fmt.Printf("keel-agent %s (agent API %s)\n", version.Version, version.APIVersion)
		os.Exit(0)
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err := o.logLevel.UnmarshalText([]byte(*level)); err != nil {
		return o, fmt.Errorf("--log-level %q: want debug, info, warn or error", *level)
	}
	return o, nil
}

func run(args []string) error {
	o, err := parseFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: o.logLevel}))
	slog.SetDefault(log)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	reg := metrics.New()
	svc := service.New(service.Handlers{
		Guest: &service.Guest{Metrics: reg},
	})
	srv, err := server.New(svc, service.Health{}, reg, log)
	if err != nil {
		return err
	}
	ln, err := server.Listen(o.addr)
	if err != nil {
		return err
	}
	log.Info("listening", "addr", o.addr, "version", version.Version, "pid", os.Getpid())

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	return nil
}
