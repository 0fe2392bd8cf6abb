// Package vhostuser is the back-end (device) side of the vhost-user
// protocol (QEMU docs/interop/vhost-user.rst): QEMU, the front-end,
// connects to a Unix socket and hands over guest memory (memfd regions
// passed with SCM_RIGHTS), ring addresses and kick/call eventfds; the
// back-end then processes the virtqueues directly in shared memory.
//
// A Server owns the protocol state (features, memory table, vring
// configuration, kick goroutines) and drives a Backend through Start, Stop
// and Reset. The device logic (for example vsockdev) only implements
// Backend and sees ready-made virtq.Queues.
//
// Supported: GET/SET_FEATURES, GET/SET_PROTOCOL_FEATURES (MQ, REPLY_ACK,
// CONFIG), SET_OWNER, RESET_OWNER, SET_MEM_TABLE, SET_VRING_NUM/ADDR/BASE/
// KICK/CALL/ERR/ENABLE, GET_VRING_BASE, GET_QUEUE_NUM, GET_CONFIG,
// SET_CONFIG (ignored). No dirty logging, no polling mode, no EVENT_IDX.
//
// Lifecycle: the back-end is started once memory is mapped and every ring
// has a size, addresses and a kick eventfd (QEMU 7.2 sends
// SET_VRING_ENABLE only after that, so enable state is recorded but does
// not gate processing). GET_VRING_BASE stops and resets the back-end (the
// driver reset or the VM stopped); a new SET_MEM_TABLE or kick fd
// restarts it on the new configuration, resuming at the saved ring bases.
package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Request codes (front-end → back-end).
const (
	reqGetFeatures         = 1
	reqSetFeatures         = 2
	reqSetOwner            = 3
	reqResetOwner          = 4
	reqSetMemTable         = 5
	reqSetLogBase          = 6
	reqSetLogFd            = 7
	reqSetVringNum         = 8
	reqSetVringAddr        = 9
	reqSetVringBase        = 10
	reqGetVringBase        = 11
	reqSetVringKick        = 12
	reqSetVringCall        = 13
	reqSetVringErr         = 14
	reqGetProtocolFeatures = 15
	reqSetProtocolFeatures = 16
	reqGetQueueNum         = 17
	reqSetVringEnable      = 18
	reqGetConfig           = 24
	reqSetConfig           = 25
)

// Feature bits.
const (
	// FeatureVersion1 is VIRTIO_F_VERSION_1.
	FeatureVersion1 = uint64(1) << 32
	// FeatureIndirectDesc is VIRTIO_RING_F_INDIRECT_DESC.
	FeatureIndirectDesc = uint64(1) << 28
	// featureProtocolFeatures is VHOST_USER_F_PROTOCOL_FEATURES.
	featureProtocolFeatures = uint64(1) << 30

	protoMQ       = uint64(1) << 0
	protoReplyAck = uint64(1) << 3
	protoConfig   = uint64(1) << 9

	// supportedProtocolFeatures is what this back-end implements.
	supportedProtocolFeatures = protoMQ | protoReplyAck | protoConfig
)

// Header flag bits.
const (
	flagVersion   = 0x1
	flagReply     = 0x4
	flagNeedReply = 0x8
	versionMask   = 0x3
)

// Protocol limits.
const (
	headerSize = 12
	// MaxPayload bounds a message payload; larger messages end the
	// session (the largest legitimate one, SET_MEM_TABLE with
	// MaxMemRegions, is 264 bytes; GET_CONFIG carries at most 256 bytes
	// of config space).
	MaxPayload = 4096
	// MaxMemRegions is VHOST_MEMORY_BASELINE_NREGIONS.
	MaxMemRegions = 8
	// MaxFDs bounds file descriptors accepted with one message.
	MaxFDs = MaxMemRegions
	// maxConfigSize is the largest config space a device may expose.
	maxConfigSize = 256

	vringFDInvalid = 1 << 8
	vringIndexMask = 0xff
)

// Sentinel errors.
var (
	// ErrProtocol means the front-end sent a message that breaks the
	// protocol; the session is ended.
	ErrProtocol = errors.New("vhost-user protocol error")
)

type header struct {
	Request uint32
	Flags   uint32
	Size    uint32
}

func parseHeader(b []byte) (header, error) {
	if len(b) < headerSize {
		return header{}, fmt.Errorf("unable to parse header of %d bytes: %w", len(b), ErrProtocol)
	}
	h := header{
		Request: binary.LittleEndian.Uint32(b[0:]),
		Flags:   binary.LittleEndian.Uint32(b[4:]),
		Size:    binary.LittleEndian.Uint32(b[8:]),
	}
	if h.Flags&versionMask != flagVersion {
		return h, fmt.Errorf("unable to handle message version %d: %w", h.Flags&versionMask, ErrProtocol)
	}
	if h.Size > MaxPayload {
		return h, fmt.Errorf("unable to handle %d-byte payload (limit %d): %w", h.Size, MaxPayload, ErrProtocol)
	}
	return h, nil
}

func (h header) marshal() []byte {
	b := make([]byte, headerSize)
	binary.LittleEndian.PutUint32(b[0:], h.Request)
	binary.LittleEndian.PutUint32(b[4:], h.Flags)
	binary.LittleEndian.PutUint32(b[8:], h.Size)
	return b
}

// memRegion is VhostUserMemoryRegion.
type memRegion struct {
	GuestAddr, Size, UserAddr, MmapOffset uint64
}

func parseMemTable(p []byte) ([]memRegion, error) {
	if len(p) < 8 {
		return nil, fmt.Errorf("unable to parse memory table of %d bytes: %w", len(p), ErrProtocol)
	}
	n := binary.LittleEndian.Uint32(p)
	if n == 0 || n > MaxMemRegions || len(p) < 8+int(n)*32 {
		return nil, fmt.Errorf("unable to parse memory table with %d regions in %d bytes: %w", n, len(p), ErrProtocol)
	}
	regs := make([]memRegion, n)
	for i := range regs {
		b := p[8+32*i:]
		regs[i] = memRegion{
			GuestAddr:  binary.LittleEndian.Uint64(b[0:]),
			Size:       binary.LittleEndian.Uint64(b[8:]),
			UserAddr:   binary.LittleEndian.Uint64(b[16:]),
			MmapOffset: binary.LittleEndian.Uint64(b[24:]),
		}
	}
	return regs, nil
}

// vringAddr is vhost_vring_addr.
type vringAddr struct {
	Index                  uint32
	Flags                  uint32
	Desc, Used, Avail, Log uint64
}

func parseVringAddr(p []byte) (vringAddr, error) {
	if len(p) < 40 {
		return vringAddr{}, fmt.Errorf("unable to parse vring address of %d bytes: %w", len(p), ErrProtocol)
	}
	le := binary.LittleEndian
	return vringAddr{
		Index: le.Uint32(p[0:]), Flags: le.Uint32(p[4:]),
		Desc: le.Uint64(p[8:]), Used: le.Uint64(p[16:]), Avail: le.Uint64(p[24:]), Log: le.Uint64(p[32:]),
	}, nil
}

func parseU64(p []byte) (uint64, error) {
	if len(p) < 8 {
		return 0, fmt.Errorf("unable to parse u64 payload of %d bytes: %w", len(p), ErrProtocol)
	}
	return binary.LittleEndian.Uint64(p), nil
}

// parseState parses vhost_vring_state.
func parseState(p []byte) (index, num uint32, err error) {
	if len(p) < 8 {
		return 0, 0, fmt.Errorf("unable to parse vring state of %d bytes: %w", len(p), ErrProtocol)
	}
	return binary.LittleEndian.Uint32(p), binary.LittleEndian.Uint32(p[4:]), nil
}

func u64Bytes(v uint64) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, v)
	return b
}

func stateBytes(index, num uint32) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint32(b, index)
	binary.LittleEndian.PutUint32(b[4:], num)
	return b
}
