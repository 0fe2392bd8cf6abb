package outputreader

import (
	"encoding/binary"

	"google.golang.org/protobuf/encoding/protowire"
)

// ttrpc framing (ttrpc's PROTOCOL.md): a 10-byte header (body length,
// stream id, message type, flags), then the body.
const (
	headerLen       = 10
	msgTypeRequest  = 1
	msgTypeResponse = 2
	// maxFrame is ttrpc's largest message body (messageLengthMax).
	maxFrame = 4 << 20
)

// Field numbers of ttrpc's Request and of Kata's ReadStreamRequest.
const (
	requestService protowire.Number = 1
	requestMethod  protowire.Number = 2
	requestPayload protowire.Number = 3

	readStreamContainerID protowire.Number = 1
	readStreamExecID      protowire.Number = 2
	readStreamLen         protowire.Number = 3
)

const service = "grpc.AgentService"

// requestCap bounds the encoding of one request frame for ids of idsLen
// bytes in all: the header, the service and method names, the ids, the len
// and at most six tags and five length varints.
func requestCap(method string, idsLen int) int {
	return headerLen + len(service) + len(method) + idsLen + 6 + 5*binary.MaxVarintLen32 + binary.MaxVarintLen64
}

// appendRequest appends the ttrpc request frame the generated client sends
// for method (ReadStdout or ReadStderr) with this ReadStreamRequest and
// stream id, byte for byte: proto3 leaves empty strings out, fields go in
// number order, and no timeout or metadata is sent (the shim's stream
// reads carry neither; deadlines are kept on this side).
func appendRequest(b []byte, id uint32, method, containerID, execID string, n uint32) []byte {
	payloadLen := 0
	if containerID != "" {
		payloadLen += 1 + protowire.SizeBytes(len(containerID))
	}
	if execID != "" {
		payloadLen += 1 + protowire.SizeBytes(len(execID))
	}
	if n != 0 {
		payloadLen += 1 + protowire.SizeVarint(uint64(n))
	}
	bodyLen := 1 + protowire.SizeBytes(len(service)) + 1 + protowire.SizeBytes(len(method))
	if payloadLen > 0 {
		bodyLen += 1 + protowire.SizeBytes(payloadLen)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(bodyLen))
	b = binary.BigEndian.AppendUint32(b, id)
	b = append(b, msgTypeRequest, 0)
	b = protowire.AppendTag(b, requestService, protowire.BytesType)
	b = protowire.AppendString(b, service)
	b = protowire.AppendTag(b, requestMethod, protowire.BytesType)
	b = protowire.AppendString(b, method)
	if payloadLen == 0 {
		return b
	}
	b = protowire.AppendTag(b, requestPayload, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(payloadLen))
	if containerID != "" {
		b = protowire.AppendTag(b, readStreamContainerID, protowire.BytesType)
		b = protowire.AppendString(b, containerID)
	}
	if execID != "" {
		b = protowire.AppendTag(b, readStreamExecID, protowire.BytesType)
		b = protowire.AppendString(b, execID)
	}
	if n != 0 {
		b = protowire.AppendTag(b, readStreamLen, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(n))
	}
	return b
}
