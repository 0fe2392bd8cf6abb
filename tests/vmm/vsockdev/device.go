// Package vsockdev is a userspace virtio-vsock device for QEMU guests
// (QEMU's -device vhost-user-vsock-pci) with a Firecracker-style "hybrid
// vsock" host side: guest AF_VSOCK streams become Unix socket streams on the
// host, so tests reach a guest's AF_VSOCK listener on a machine without
// /dev/vhost-vsock.
//
// Usage (the QEMU launcher):
//
//	dev, err := vsockdev.Start(ctx, vsockdev.Config{
//		VhostUserSocket: dir + "/vhost.sock", // QEMU connects here
//		UDSPath:         dir + "/vsock",      // hybrid vsock socket
//		GuestCID:        3,
//	})
//	defer dev.Close()
//	// qemu-system-x86_64 -machine q35,memory-backend=mem \
//	//   -object memory-backend-memfd,id=mem,size=512M,share=on \
//	//   -chardev socket,id=vsk,path=<VhostUserSocket> \
//	//   -device vhost-user-vsock-pci,chardev=vsk
//
// The socket exists when Start returns. Host→guest: connect to UDSPath,
// write "CONNECT <port>\n", read "OK <hostport>\n", then the connection is
// the byte stream to the guest's listener on <port>. If nothing listens in
// the guest (it answers RST) the connection is closed without "OK"; retry.
// Guest→host: a guest connecting to CID 2 port P is connected to the Unix
// socket "<UDSPath>_<P>" (RST if nothing listens there).
//
// Event flow: the guest's tx queue carries packets to HandleGuest of the
// Muxer, which owns per-connection state and one reader and one writer
// goroutine per host socket; packets for the guest queue in the Muxer and
// the device worker moves them into rx buffers whenever the guest has
// posted some. Flow control is virtio-vsock credit in both directions: the
// host socket is read only while the guest has credit, and guest data is
// acknowledged (fwd_cnt) only once written to the host socket, so neither
// side buffers more than the named limits in muxer.go.
package vsockdev

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"sync"

	"github.com/keelvm/keel/tests/vmm/vhostuser"
	"github.com/keelvm/keel/tests/vmm/virtq"
)

// DefaultGuestCID is used when Config.GuestCID is zero.
const DefaultGuestCID = 3

// Queue indices of a virtio-vsock device handled by the back-end (the
// event queue is emulated by QEMU itself).
const (
	rxQueue   = 0
	txQueue   = 1
	numQueues = 2
)

// Config configures Start.
type Config struct {
	// VhostUserSocket is the Unix socket QEMU's chardev connects to.
	VhostUserSocket string
	// UDSPath is the hybrid-vsock host socket; guest connections to host
	// port P go to UDSPath + "_P".
	UDSPath string
	// GuestCID is reported in the device config space (default 3).
	GuestCID uint32
	// Log receives diagnostics; nil discards them.
	Log *slog.Logger
}

// Device is a running vsock device. Close releases it.
type Device struct {
	mux   *Muxer
	srv   *vhostuser.Server
	udsLn *net.UnixListener
	be    *backend

	closeOnce sync.Once
	closeErr  error
	served    chan struct{}
}

// Start creates both sockets and serves them in the background until
// Close. Like qemu.Launch, ctx bounds only the start-up (it is checked on
// entry; nothing in Start blocks): the device outlives it. On error
// nothing is left behind.
func Start(ctx context.Context, cfg Config) (*Device, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("unable to start vsock device: %w", err)
	}
	if cfg.VhostUserSocket == "" || cfg.UDSPath == "" {
		return nil, errors.New("unable to start vsock device: VhostUserSocket and UDSPath are required")
	}
	if cfg.GuestCID == 0 {
		cfg.GuestCID = DefaultGuestCID
	}
	if cfg.GuestCID <= HostCID || cfg.GuestCID == ^uint32(0) {
		return nil, fmt.Errorf("unable to start vsock device: invalid guest CID %d", cfg.GuestCID)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := removeStaleSocket(cfg.UDSPath); err != nil {
		return nil, err
	}
	udsLn, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.UDSPath, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("unable to listen on %s: %w", cfg.UDSPath, err)
	}
	udsLn.SetUnlinkOnClose(true)
	mux := NewMuxer(cfg.GuestCID, cfg.UDSPath, log)
	be := &backend{mux: mux, guestCID: cfg.GuestCID, log: log}
	srv, err := vhostuser.Listen(cfg.VhostUserSocket, be, log)
	if err != nil {
		udsLn.Close()
		return nil, fmt.Errorf("unable to start vsock device: %w", err)
	}
	d := &Device{mux: mux, srv: srv, udsLn: udsLn, be: be, served: make(chan struct{})}
	go func() {
		defer close(d.served)
		mux.Serve(udsLn)
	}()
	return d, nil
}

func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("unable to listen on %s: exists and is not a socket", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("unable to remove stale socket: %w", err)
	}
	return nil
}

// Close stops the device: both sockets are closed and removed, every
// connection is dropped and all goroutines have exited when it returns.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		err1 := d.srv.Close()
		err2 := d.udsLn.Close()
		<-d.served
		d.mux.Close()
		if errors.Is(err2, net.ErrClosed) {
			err2 = nil
		}
		d.closeErr = errors.Join(err1, err2)
	})
	return d.closeErr
}

// Stats returns the device's counters.
func (d *Device) Stats() Stats { return d.mux.Stats() }

// backend adapts the Muxer to vhostuser.Backend.
type backend struct {
	mux      *Muxer
	guestCID uint32
	log      *slog.Logger

	mu   sync.Mutex
	stop chan struct{}
	done chan struct{}
}

var _ vhostuser.Backend = (*backend)(nil)

func (b *backend) Features() uint64 {
	return vhostuser.FeatureVersion1 | vhostuser.FeatureIndirectDesc
}

// Config is struct virtio_vsock_config: le64 guest_cid.
func (b *backend) Config() []byte {
	return binary.LittleEndian.AppendUint64(nil, uint64(b.guestCID))
}

func (b *backend) NumQueues() int { return numQueues }

func (b *backend) Start(rings []*vhostuser.Vring) error {
	if len(rings) != numQueues {
		return fmt.Errorf("unable to start: got %d queues, want %d", len(rings), numQueues)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stop != nil {
		return errors.New("unable to start: already running")
	}
	b.stop, b.done = make(chan struct{}), make(chan struct{})
	w := &worker{mux: b.mux, log: b.log, rx: rings[rxQueue], tx: rings[txQueue]}
	go func(stop, done chan struct{}) {
		defer close(done)
		w.run(stop)
	}(b.stop, b.done)
	return nil
}

func (b *backend) Stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stop == nil {
		return
	}
	close(b.stop)
	<-b.done
	b.stop, b.done = nil, nil
}

func (b *backend) Reset() { b.mux.Reset() }

// worker moves packets between the rings and the Muxer.
type worker struct {
	mux    *Muxer
	log    *slog.Logger
	rx, tx *vhostuser.Vring
	txbuf  []byte
	hdr    [HeaderSize]byte
}

func (w *worker) run(stop <-chan struct{}) {
	w.txbuf = make([]byte, HeaderSize+MaxPacketPayload)
	for {
		w.processTx()
		w.processRx()
		select {
		case <-stop:
			return
		case <-w.tx.Kick:
		case <-w.rx.Kick:
		case <-w.mux.RxWake():
		}
	}
}

// processTx consumes every packet the guest posted on the tx queue.
func (w *worker) processTx() {
	q := w.tx.Queue
	used := false
	for {
		c, ok, err := q.Pop()
		if !ok {
			if err != nil {
				w.log.Error("vsock: tx ring broken", "err", err)
			}
			break
		}
		used = true
		if err != nil {
			w.mux.stats.bad.Add(1)
			w.log.Warn("vsock: rejected tx chain", "err", err)
		} else {
			w.handleTxChain(c)
		}
		// Only now may the driver reuse the buffers.
		q.Push(c.Head, 0)
	}
	if used {
		if err := w.tx.Notify(); err != nil {
			w.log.Warn("vsock: tx notify failed", "err", err)
		}
	}
}

// handleTxChain parses one packet and hands it to the muxer, which copies
// the payload before the chain is returned to the driver.
func (w *worker) handleTxChain(c *virtq.Chain) {
	n := virtq.Gather(w.txbuf, c.Readable, 0)
	h, err := ParseHeader(w.txbuf[:n])
	if err != nil {
		w.mux.stats.bad.Add(1)
		w.log.Warn("vsock: rejected tx packet", "err", err)
		return
	}
	// A payload longer than the limit or than the chain reaches the
	// muxer with a length mismatch, which resets the connection.
	plen := min(int(h.Len), n-HeaderSize)
	w.mux.HandleGuest(h, w.txbuf[HeaderSize:HeaderSize+plen])
}

// processRx fills guest rx buffers with pending packets.
func (w *worker) processRx() {
	q := w.rx.Queue
	used := false
	for w.mux.HasPending() {
		c, ok, err := q.Pop()
		if !ok {
			if err != nil {
				w.log.Error("vsock: rx ring broken", "err", err)
			}
			break
		}
		used = true
		if err != nil || c.WritableLen() <= HeaderSize {
			w.mux.stats.bad.Add(1)
			w.log.Warn("vsock: rejected rx chain", "err", err, "writable", c.WritableLen())
			q.Push(c.Head, 0)
			continue
		}
		h, data, ok := w.mux.NextPacket(c.WritableLen() - HeaderSize)
		if !ok {
			q.Push(c.Head, 0) // raced with a reset; the driver drops it
			break
		}
		h.Marshal(w.hdr[:])
		virtq.Scatter(c.Writable, 0, w.hdr[:])
		virtq.Scatter(c.Writable, HeaderSize, data)
		q.Push(c.Head, uint32(HeaderSize+len(data)))
	}
	if used {
		if err := w.rx.Notify(); err != nil {
			w.log.Warn("vsock: rx notify failed", "err", err)
		}
	}
}
