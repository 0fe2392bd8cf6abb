// Package readstream encodes Kata's ReadStreamResponse (the answer to
// ReadStdout and ReadStderr) in place, around data that was read straight
// into the buffer that becomes the message.
//
// A ReadStreamResponse is one field: tag 0x0a (field 1, length-delimited),
// the data's length as a varint, then the data. proto.Marshal of a
// *grpc.ReadStreamResponse allocates a new buffer and copies the data into
// it; for stdout that copy, and the allocation, were a large part of the
// cost of every read. Here the reader leaves Headroom spare bytes in front
// of the data, Encode writes the tag and length into the end of that room,
// and the message's Marshal returns the buffer as it is: proto.Marshal (and
// so ttrpc) gets the encoded message without another copy.
//
// The message is still a complete proto.Message: reflection sees a
// ReadStreamResponse whose Data is the data, so proto.Size, proto.Equal,
// prototext and the reflection-only build of protobuf-go give the same
// answers as for a *grpc.ReadStreamResponse.
package readstream

import (
	"encoding/binary"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/runtime/protoiface"

	pb "github.com/keelvm/keel/protocol/grpc"
)

// Headroom is the room a reader leaves in front of the data: one tag byte
// and a varint length of up to 32 bits.
const Headroom = 1 + binary.MaxVarintLen32

// FrameOverhead bounds what the answer to a read adds around its data on
// the way out of ttrpc: ttrpc's Response (an empty OK status, 2 bytes; the
// payload's tag and length, up to 6) around the ReadStreamResponse (tag
// and length, up to 6). The same bound covers Headroom.
const FrameOverhead = 2 + 6 + 6

// DataLen is how much data to put in the answer to a read of n bytes: n,
// or FrameOverhead less when n is a multiple of 8 KiB, as Kata's 32 KiB
// reads are. Every buffer the answer passes through is the data plus a few
// bytes: the one it is read into (Headroom more), the ttrpc frame (up to
// FrameOverhead more), and, in a Go client such as Kata's runtime, the
// decoded payload and data. Go rounds an allocation up to its size class,
// and anything above 32 KiB to whole 8 KiB pages: at exactly 32 KiB of data
// each of those buffers would take 40 KiB and come from the page heap under
// its lock, instead of a 32 KiB size class. The answer is a few bytes
// shorter than asked, which a read is always allowed to be.
func DataLen(n int) int {
	const page = 8 << 10
	if n >= page && n%page == 0 {
		return n - FrameOverhead
	}
	return n
}

// dataField is ReadStreamResponse.data's field number.
const dataField protowire.Number = 1

// Response is a ReadStreamResponse whose wire encoding is already built.
// It is immutable once made by Encode.
type Response struct {
	msg pb.ReadStreamResponse // Data aliases the data in enc, for reflection
	enc []byte                // the whole encoded message
}

// Encode returns the ReadStreamResponse carrying buf[Headroom:] as its data,
// encoded into buf itself: the header is written into the end of
// buf[:Headroom], so buf must not be used by the caller afterwards. Empty
// data (Kata's end of stream) encodes to an empty message.
func Encode(buf []byte) (*Response, error) {
	if len(buf) < Headroom {
		return nil, fmt.Errorf("readstream: buffer of %d bytes has no room for the %d-byte header", len(buf), Headroom)
	}
	data := buf[Headroom:]
	if uint64(len(data)) > 1<<32-1 {
		return nil, fmt.Errorf("readstream: %d bytes of data exceed a 32-bit length", len(data))
	}
	r := &Response{}
	if len(data) == 0 {
		return r, nil
	}
	r.msg.Data = data
	hdr := protowire.AppendVarint(protowire.AppendTag(make([]byte, 0, Headroom), dataField, protowire.BytesType), uint64(len(data)))
	start := Headroom - len(hdr)
	copy(buf[start:], hdr)
	r.enc = buf[start:]
	return r, nil
}

// Data is the response's data (aliasing the encoded buffer).
func (r *Response) Data() []byte { return r.msg.Data }

// ProtoReflect implements proto.Message: the reflection of the equivalent
// *grpc.ReadStreamResponse, with a Marshal fast path that returns the
// encoded buffer.
func (r *Response) ProtoReflect() protoreflect.Message {
	return reflected{Message: r.msg.ProtoReflect(), r: r}
}

var _ proto.Message = (*Response)(nil)

// reflected overrides ProtoMethods of the equivalent message's reflection.
type reflected struct {
	protoreflect.Message
	r *Response
}

func (m reflected) Interface() protoreflect.ProtoMessage { return m.r }

func (m reflected) ProtoMethods() *protoiface.Methods { return &methods }

// methods has no Size on purpose: with one, proto.Marshal allocates a
// buffer of that size and Marshal would have to copy into it. proto.Size
// falls back to reflection, which gives the same number.
var methods = protoiface.Methods{
	Flags:   protoiface.SupportMarshalDeterministic, // one field: always deterministic
	Marshal: marshal,
	CheckInitialized: func(protoiface.CheckInitializedInput) (protoiface.CheckInitializedOutput, error) {
		return protoiface.CheckInitializedOutput{}, nil
	},
}

func marshal(in protoiface.MarshalInput) (protoiface.MarshalOutput, error) {
	m, ok := in.Message.(reflected)
	if !ok {
		return protoiface.MarshalOutput{}, fmt.Errorf("readstream: marshal of %T", in.Message)
	}
	if len(in.Buf) == 0 {
		// proto.Marshal: the encoding is the answer, no copy.
		return protoiface.MarshalOutput{Buf: m.r.enc}, nil
	}
	// Appending to an existing buffer (proto.MarshalAppend): copy.
	return protoiface.MarshalOutput{Buf: append(in.Buf, m.r.enc...)}, nil
}
