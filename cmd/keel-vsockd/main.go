// Command keel-vsockd is a standalone vhost-user-vsock back-end with a
// Firecracker-style hybrid vsock host side, for running QEMU guests with
// AF_VSOCK on hosts without /dev/vhost-vsock:
//
//	keel-vsockd --socket /run/vm/vhost.sock --uds /run/vm/vsock --guest-cid 3 &
//	qemu-system-x86_64 -machine q35,memory-backend=mem \
//	  -object memory-backend-memfd,id=mem,size=512M,share=on \
//	  -chardev socket,id=vsk,path=/run/vm/vhost.sock \
//	  -device vhost-user-vsock-pci,chardev=vsk ...
//
// Host clients connect to --uds and send "CONNECT <port>\n"; guest
// connections to CID 2 port P reach the Unix socket "<uds>_P". It runs
// until SIGINT/SIGTERM, then removes its sockets.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/keelvm/keel/tests/vmm/vsockdev"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "keel-vsockd:", err)
		os.Exit(1)
	}
}

func run() error {
	socket := flag.String("socket", "", "vhost-user socket to listen on (QEMU's chardev path)")
	uds := flag.String("uds", "", "hybrid vsock Unix socket path")
	cid := flag.Uint("guest-cid", vsockdev.DefaultGuestCID, "guest CID reported to the guest")
	debug := flag.Bool("debug", false, "log protocol details")
	flag.Parse()
	if *socket == "" || *uds == "" || flag.NArg() != 0 {
		flag.Usage()
		return fmt.Errorf("--socket and --uds are required")
	}
	if *cid > 1<<32-2 {
		return fmt.Errorf("invalid --guest-cid %d", *cid)
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dev, err := vsockdev.Start(ctx, vsockdev.Config{
		VhostUserSocket: *socket, UDSPath: *uds, GuestCID: uint32(*cid), Log: log,
	})
	if err != nil {
		return err
	}
	log.Info("serving", "socket", *socket, "uds", *uds, "guest_cid", *cid)
	<-ctx.Done()
	if err := dev.Close(); err != nil {
		return err
	}
	log.Info("stopped", "stats", fmt.Sprintf("%+v", dev.Stats()))
	return nil
}
