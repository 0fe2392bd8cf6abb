package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/keelvm/keel/tests/vmm/virtq"
)

// Backend is a virtio device implemented over vhost-user.
type Backend interface {
	// Features are the virtio feature bits offered to the driver. The
	// server adds VHOST_USER_F_PROTOCOL_FEATURES.
	Features() uint64
	// Config is the device configuration space.
	Config() []byte
	// NumQueues is the number of virtqueues the back-end processes.
	NumQueues() int
	// Start begins processing; it is called once every queue has memory,
	// addresses and a kick eventfd. It must not block.
	Start(rings []*Vring) error
	// Stop ends processing and returns only when no goroutine of the
	// back-end touches guest memory or the rings any more.
	Stop()
	// Reset forgets device state (the driver reset the device).
	Reset()
}

// Vring is a started virtqueue handed to the back-end.
type Vring struct {
	// Queue is the split ring in guest memory.
	Queue *virtq.Queue
	// Kick receives a value after the driver kicked the queue (coalesced).
	Kick   <-chan struct{}
	notify func() error
}

// NewVring assembles a Vring; notify signals the driver (the server passes
// a write to the call eventfd; tests pass their own).
func NewVring(q *virtq.Queue, kick <-chan struct{}, notify func() error) *Vring {
	return &Vring{Queue: q, Kick: kick, notify: notify}
}

// Notify sends a used-buffer notification to the driver, unless the driver
// suppressed it.
func (v *Vring) Notify() error {
	if !v.Queue.NeedsNotify() {
		return nil
	}
	return v.notify()
}

// signal writes 1 to the current call eventfd, if any.
func signal(call *atomic.Pointer[os.File]) error {
	f := call.Load()
	if f == nil {
		return nil
	}
	var one [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	if _, err := f.Write(one[:]); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("unable to signal call eventfd: %w", err)
	}
	return nil
}

// vring is the server's view of one queue's configuration.
type vring struct {
	num     uint32
	addr    *vringAddr
	base    uint16
	kick    *os.File
	kickCh  chan struct{}
	call    atomic.Pointer[os.File]
	err     *os.File
	started bool // kicked since the last GET_VRING_BASE
	enabled bool
}

// mapping is one mmapped memory region.
type mapping struct {
	whole []byte
}

// session is the state of one front-end connection.
type session struct {
	uc                      *net.UnixConn
	b                       Backend
	log                     *slog.Logger
	features, protoFeatures uint64
	mem                     *virtq.Memory
	maps                    []mapping
	rings                   []*vring
	running                 []*Vring
	kickWG                  sync.WaitGroup
}

// ServeConn runs one vhost-user session on uc until the front-end
// disconnects, a protocol error occurs or uc is closed. On return the
// back-end is stopped and reset and every mapping and fd is released.
func ServeConn(uc *net.UnixConn, b Backend, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &session{uc: uc, b: b, log: log}
	for range b.NumQueues() {
		s.rings = append(s.rings, &vring{kickCh: make(chan struct{}, 1)})
	}
	defer s.teardown()
	for {
		h, payload, fds, err := s.read()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		err = s.handle(h, payload, &fds)
		closeAll(fds) // whatever the handler did not take
		if err != nil {
			return fmt.Errorf("unable to handle request %d: %w", h.Request, err)
		}
	}
}

func closeAll(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// read receives one message with its fds.
func (s *session) read() (header, []byte, []int, error) {
	hb := make([]byte, headerSize)
	oob := make([]byte, unix.CmsgSpace(MaxFDs*4))
	n, oobn, _, _, err := s.uc.ReadMsgUnix(hb, oob)
	var fds []int
	if oobn > 0 {
		cmsgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr == nil {
			for _, c := range cmsgs {
				if r, err := unix.ParseUnixRights(&c); err == nil {
					fds = append(fds, r...)
				}
			}
		}
	}
	if err == nil && n == 0 {
		err = io.EOF
	}
	if err == nil && n < headerSize {
		_, err = io.ReadFull(s.uc, hb[n:])
	}
	if err != nil {
		closeAll(fds)
		return header{}, nil, nil, err
	}
	h, err := parseHeader(hb)
	if err != nil {
		closeAll(fds)
		return h, nil, nil, err
	}
	payload := make([]byte, h.Size)
	if _, err := io.ReadFull(s.uc, payload); err != nil {
		closeAll(fds)
		return h, nil, nil, fmt.Errorf("unable to read payload: %w", err)
	}
	return h, payload, fds, nil
}

func (s *session) reply(h header, payload []byte) error {
	rh := header{Request: h.Request, Flags: flagVersion | flagReply, Size: uint32(len(payload))}
	if _, err := s.uc.Write(append(rh.marshal(), payload...)); err != nil {
		return fmt.Errorf("unable to send reply: %w", err)
	}
	return nil
}

// takeFD removes and returns the single fd of a message.
func takeFD(fds *[]int) (*os.File, error) {
	if len(*fds) != 1 {
		return nil, fmt.Errorf("unable to take fd: got %d fds, want 1: %w", len(*fds), ErrProtocol)
	}
	fd := (*fds)[0]
	(*fds)[0] = -1
	return os.NewFile(uintptr(fd), "vhost-user-fd"), nil
}

func (s *session) ring(index uint32) (*vring, error) {
	if index >= uint32(len(s.rings)) {
		return nil, fmt.Errorf("unable to use vring %d of %d: %w", index, len(s.rings), ErrProtocol)
	}
	return s.rings[index], nil
}

// handle dispatches one request. Requests with a defined reply send it;
// others are acked when REPLY_ACK is negotiated and need_reply set.
func (s *session) handle(h header, p []byte, fds *[]int) error {
	s.log.Debug("vhost-user request", "req", h.Request, "flags", h.Flags, "size", h.Size, "fds", len(*fds))
	var err error
	switch h.Request {
	case reqGetFeatures:
		return s.reply(h, u64Bytes(s.b.Features()|featureProtocolFeatures))
	case reqGetProtocolFeatures:
		return s.reply(h, u64Bytes(supportedProtocolFeatures))
	case reqGetQueueNum:
		return s.reply(h, u64Bytes(uint64(len(s.rings))))
	case reqGetVringBase:
		var idx uint32
		if idx, _, err = parseState(p); err != nil {
			return err
		}
		r, err := s.ring(idx)
		if err != nil {
			return err
		}
		if s.running != nil {
			s.stop()
			s.b.Reset()
		}
		r.started = false
		return s.reply(h, stateBytes(idx, uint32(r.base)))
	case reqGetConfig:
		return s.getConfig(h, p)

	case reqSetFeatures:
		var f uint64
		if f, err = parseU64(p); err == nil {
			if f&^(s.b.Features()|featureProtocolFeatures) != 0 {
				err = fmt.Errorf("unable to accept features %#x beyond offered: %w", f, ErrProtocol)
			} else {
				s.features = f
			}
		}
	case reqSetProtocolFeatures:
		var f uint64
		if f, err = parseU64(p); err == nil {
			s.protoFeatures = f & supportedProtocolFeatures
		}
	case reqSetOwner:
	case reqResetOwner:
		s.stop()
		s.b.Reset()
	case reqSetMemTable:
		err = s.setMemTable(p, fds)
	case reqSetVringNum:
		var idx, num uint32
		if idx, num, err = parseState(p); err == nil {
			var r *vring
			if r, err = s.ring(idx); err == nil {
				if num == 0 || num > virtq.MaxQueueSize || num&(num-1) != 0 {
					err = fmt.Errorf("unable to set vring %d size %d: %w", idx, num, ErrProtocol)
				} else {
					r.num = num
				}
			}
		}
	case reqSetVringAddr:
		var a vringAddr
		if a, err = parseVringAddr(p); err == nil {
			var r *vring
			if r, err = s.ring(a.Index); err == nil {
				r.addr = &a
			}
		}
	case reqSetVringBase:
		var idx, num uint32
		if idx, num, err = parseState(p); err == nil {
			var r *vring
			if r, err = s.ring(idx); err == nil {
				r.base = uint16(num)
			}
		}
	case reqSetVringKick, reqSetVringCall, reqSetVringErr:
		err = s.setVringFD(h.Request, p, fds)
	case reqSetVringEnable:
		var idx, num uint32
		if idx, num, err = parseState(p); err == nil {
			var r *vring
			if r, err = s.ring(idx); err == nil {
				r.enabled = num != 0
			}
		}
	case reqSetConfig, reqSetLogBase, reqSetLogFd:
		// Read-only config; logging not offered. Accept and ignore.
	default:
		err = fmt.Errorf("unable to handle unknown request %d: %w", h.Request, ErrProtocol)
	}
	if h.Flags&flagNeedReply != 0 && s.protoFeatures&protoReplyAck != 0 {
		var status uint64
		if err != nil {
			status = 1
		}
		if rerr := s.reply(h, u64Bytes(status)); rerr != nil {
			return rerr
		}
	}
	if err == nil {
		err = s.maybeStart()
	}
	return err
}

func (s *session) getConfig(h header, p []byte) error {
	if len(p) < 12 {
		return fmt.Errorf("unable to parse config request of %d bytes: %w", len(p), ErrProtocol)
	}
	off := binary.LittleEndian.Uint32(p[0:])
	size := binary.LittleEndian.Uint32(p[4:])
	if size > maxConfigSize {
		return fmt.Errorf("unable to read %d config bytes: %w", size, ErrProtocol)
	}
	out := make([]byte, 12+size)
	copy(out, p[:12])
	cfg := s.b.Config()
	if uint64(off) < uint64(len(cfg)) {
		copy(out[12:], cfg[off:])
	}
	return s.reply(h, out)
}

func (s *session) setVringFD(req uint32, p []byte, fds *[]int) error {
	v, err := parseU64(p)
	if err != nil {
		return err
	}
	r, err := s.ring(uint32(v & vringIndexMask))
	if err != nil {
		return err
	}
	var f *os.File
	if v&vringFDInvalid == 0 {
		if f, err = takeFD(fds); err != nil {
			return err
		}
	} else if req == reqSetVringKick {
		return fmt.Errorf("unable to poll vring %d without a kick fd: %w", v&vringIndexMask, ErrProtocol)
	}
	switch req {
	case reqSetVringKick:
		if s.running != nil {
			s.stop()
		}
		s.stopKick(r)
		if err := unix.SetNonblock(int(f.Fd()), true); err != nil {
			f.Close()
			return fmt.Errorf("unable to make kick fd non-blocking: %w", err)
		}
		// Re-wrap so the runtime poller manages the now non-blocking fd.
		nf := os.NewFile(uintptr(dupCloexec(f)), "kick")
		f.Close()
		if nf == nil {
			return fmt.Errorf("unable to dup kick fd")
		}
		r.kick = nf
		r.started = true
		s.kickWG.Add(1)
		go s.kickLoop(nf, r.kickCh)
	case reqSetVringCall:
		if old := r.call.Swap(f); old != nil {
			old.Close()
		}
	case reqSetVringErr:
		if r.err != nil {
			r.err.Close()
		}
		r.err = f
	}
	return nil
}

// dupCloexec duplicates f's fd (-1 on failure).
func dupCloexec(f *os.File) int {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	return fd
}

// kickLoop turns eventfd reads into coalesced channel sends.
func (s *session) kickLoop(f *os.File, ch chan struct{}) {
	defer s.kickWG.Done()
	var b [8]byte
	for {
		if _, err := f.Read(b[:]); err != nil {
			return
		}
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (s *session) stopKick(r *vring) {
	if r.kick != nil {
		r.kick.Close()
		r.kick = nil
	}
}

func (s *session) setMemTable(p []byte, fds *[]int) error {
	regs, err := parseMemTable(p)
	if err != nil {
		return err
	}
	if len(*fds) != len(regs) {
		return fmt.Errorf("unable to map %d regions with %d fds: %w", len(regs), len(*fds), ErrProtocol)
	}
	var maps []mapping
	var vregs []virtq.Region
	fail := func(err error) error {
		for _, m := range maps {
			unix.Munmap(m.whole)
		}
		return err
	}
	for i, r := range regs {
		total := r.MmapOffset + r.Size
		if r.Size == 0 || total < r.Size || total > 1<<46 {
			return fail(fmt.Errorf("unable to map region %d (offset %#x size %#x): %w", i, r.MmapOffset, r.Size, ErrProtocol))
		}
		b, err := unix.Mmap((*fds)[i], 0, int(total), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return fail(fmt.Errorf("unable to mmap region %d: %w", i, err))
		}
		maps = append(maps, mapping{whole: b})
		vregs = append(vregs, virtq.Region{GuestAddr: r.GuestAddr, UserAddr: r.UserAddr, Data: b[r.MmapOffset:total]})
	}
	mem, err := virtq.NewMemory(vregs...)
	if err != nil {
		return fail(err)
	}
	closeAll(*fds)
	for i := range *fds {
		(*fds)[i] = -1
	}
	// The back-end must not run on memory about to be unmapped; the
	// maybeStart after this request restarts it on the new table.
	s.stop()
	s.unmap()
	s.mem, s.maps = mem, maps
	return nil
}

func (s *session) unmap() {
	for _, m := range s.maps {
		unix.Munmap(m.whole)
	}
	s.maps, s.mem = nil, nil
}

// maybeStart starts the back-end when every ring is fully configured.
func (s *session) maybeStart() error {
	if s.running != nil || s.mem == nil {
		return nil
	}
	for _, r := range s.rings {
		if !r.started || r.addr == nil || r.num == 0 {
			return nil
		}
	}
	var vrs []*Vring
	for i, r := range s.rings {
		n := uint16(r.num)
		ds, as, us := virtq.RingBytes(n)
		desc, err1 := s.mem.UserSlice(r.addr.Desc, ds)
		avail, err2 := s.mem.UserSlice(r.addr.Avail, as)
		used, err3 := s.mem.UserSlice(r.addr.Used, us)
		if err := errors.Join(err1, err2, err3); err != nil {
			return fmt.Errorf("unable to map vring %d: %w", i, err)
		}
		q, err := virtq.New(s.mem, n, virtq.Addrs{Desc: desc, Avail: avail, Used: used}, r.base)
		if err != nil {
			return fmt.Errorf("unable to set up vring %d: %w", i, err)
		}
		call := &r.call
		vrs = append(vrs, NewVring(q, r.kickCh, func() error { return signal(call) }))
	}
	if err := s.b.Start(vrs); err != nil {
		return fmt.Errorf("unable to start back-end: %w", err)
	}
	s.running = vrs
	s.log.Debug("vhost-user back-end started", "queues", len(vrs))
	return nil
}

// stop stops the back-end and records where each ring stopped.
func (s *session) stop() {
	if s.running == nil {
		return
	}
	s.b.Stop()
	for i, v := range s.running {
		s.rings[i].base = v.Queue.LastAvail()
	}
	s.running = nil
}

func (s *session) teardown() {
	s.stop()
	s.b.Reset()
	for _, r := range s.rings {
		s.stopKick(r)
		if c := r.call.Swap(nil); c != nil {
			c.Close()
		}
		if r.err != nil {
			r.err.Close()
		}
	}
	s.kickWG.Wait()
	s.unmap()
}
