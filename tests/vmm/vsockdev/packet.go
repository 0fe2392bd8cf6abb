package vsockdev

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Wire constants from the virtio-vsock section of the virtio spec.
const (
	// HeaderSize is the size of struct virtio_vsock_hdr.
	HeaderSize = 44
	// HostCID is the well-known CID of the host.
	HostCID = 2

	// TypeStream is VIRTIO_VSOCK_TYPE_STREAM, the only type we carry.
	TypeStream = 1

	// ShutdownRcv and ShutdownSend are SHUTDOWN flag bits.
	ShutdownRcv  = 1
	ShutdownSend = 2
)

// Op is a virtio-vsock operation.
type Op uint16

// Operations.
const (
	OpInvalid Op = iota
	OpRequest
	OpResponse
	OpRst
	OpShutdown
	OpRW
	OpCreditUpdate
	OpCreditRequest
)

var opNames = [...]string{"INVALID", "REQUEST", "RESPONSE", "RST", "SHUTDOWN", "RW", "CREDIT_UPDATE", "CREDIT_REQUEST"}

func (o Op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return fmt.Sprintf("OP(%d)", uint16(o))
}

// ErrShortHeader means a packet is shorter than HeaderSize.
var ErrShortHeader = errors.New("packet shorter than the vsock header")

// Header is a decoded virtio_vsock_hdr.
type Header struct {
	SrcCID   uint64
	DstCID   uint64
	SrcPort  uint32
	DstPort  uint32
	Len      uint32
	Type     uint16
	Op       Op
	Flags    uint32
	BufAlloc uint32
	FwdCnt   uint32
}

// ParseHeader decodes the first HeaderSize bytes of b.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("unable to parse vsock header of %d bytes: %w", len(b), ErrShortHeader)
	}
	le := binary.LittleEndian
	return Header{
		SrcCID:   le.Uint64(b[0:]),
		DstCID:   le.Uint64(b[8:]),
		SrcPort:  le.Uint32(b[16:]),
		DstPort:  le.Uint32(b[20:]),
		Len:      le.Uint32(b[24:]),
		Type:     le.Uint16(b[28:]),
		Op:       Op(le.Uint16(b[30:])),
		Flags:    le.Uint32(b[32:]),
		BufAlloc: le.Uint32(b[36:]),
		FwdCnt:   le.Uint32(b[40:]),
	}, nil
}

// Marshal encodes h into b, which must be at least HeaderSize long.
func (h *Header) Marshal(b []byte) {
	le := binary.LittleEndian
	le.PutUint64(b[0:], h.SrcCID)
	le.PutUint64(b[8:], h.DstCID)
	le.PutUint32(b[16:], h.SrcPort)
	le.PutUint32(b[20:], h.DstPort)
	le.PutUint32(b[24:], h.Len)
	le.PutUint16(b[28:], h.Type)
	le.PutUint16(b[30:], uint16(h.Op))
	le.PutUint32(b[32:], h.Flags)
	le.PutUint32(b[36:], h.BufAlloc)
	le.PutUint32(b[40:], h.FwdCnt)
}

func (h Header) String() string {
	return fmt.Sprintf("%s %d:%d->%d:%d len=%d flags=%d buf_alloc=%d fwd_cnt=%d",
		h.Op, h.SrcCID, h.SrcPort, h.DstCID, h.DstPort, h.Len, h.Flags, h.BufAlloc, h.FwdCnt)
}
