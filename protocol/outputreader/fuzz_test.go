package outputreader

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// FuzzReply feeds the Reader a reply frame with an arbitrary body, arriving
// in pieces of an arbitrary size, and checks it against the generated
// client's decoding (proto.Unmarshal of ttrpc's Response, then of the
// ReadStreamResponse, as Kata's readProcessStream uses them): the same
// data, the same status error, io.EOF for the same replies; a body proto
// refuses is an error, and so is one this package refuses by design (more
// data than asked, a reply too large for what was asked, too many status
// fields). Never a panic.
func FuzzReply(f *testing.F) {
	ok := responseBody(f, nil, []byte("hello, world"))
	f.Add(ok, uint16(100), uint8(3))
	f.Add(ok, uint16(100), uint8(255))
	f.Add(responseBody(f, nil, nil), uint16(10), uint8(1))
	f.Add(responseBody(f, &spb.Status{Code: int32(codes.NotFound), Message: strings.Repeat("m", 600)}, nil), uint16(10), uint8(7))
	f.Add(protowire.AppendFixed32(protowire.AppendTag(ok, 7, protowire.Fixed32Type), 1), uint16(50), uint8(2))
	f.Add([]byte{0x12, 0x02, 0x0a, 0x05}, uint16(50), uint8(2))
	f.Fuzz(func(t *testing.T, body []byte, asked uint16, chunk uint8) {
		if asked == 0 || chunk == 0 {
			return
		}
		conn := &memConn{in: frame(1, msgTypeResponse, body), chunk: int(chunk)}
		r, err := New(conn, Stdout, "c", "e", Options{})
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		p := make([]byte, asked)
		for {
			var n int
			n, err = r.Read(p)
			got = append(got, p[:n]...)
			if err != nil {
				break
			}
		}
		want, werr := genericDecode(body)
		switch {
		case errors.Is(err, ErrProtocol):
			if len(got) > 0 {
				t.Fatalf("%d bytes delivered before %v", len(got), err)
			}
			if werr == nil || werr == io.EOF || isStatus(werr) {
				// Refused by design only.
				msg := err.Error()
				if !(len(want) > int(asked) && strings.Contains(msg, "for a read of")) &&
					!(len(body) > int(asked)+MaxEnvelope && strings.Contains(msg, "to a read of")) &&
					!strings.Contains(msg, "status fields") {
					t.Fatalf("Reader: %v; generated client: %d bytes, %v", err, len(want), werr)
				}
			}
		case werr != nil && werr != io.EOF && !isStatus(werr):
			t.Fatalf("generated client refuses the reply (%v); Reader: %d bytes, %v", werr, len(got), err)
		case werr != nil:
			if len(got) > 0 || !sameError(err, werr) {
				t.Fatalf("Reader: %d bytes, %v; generated client: %v", len(got), err, werr)
			}
		default:
			// The data, then the connection's end (the next request's
			// reply never comes).
			if !bytes.Equal(got, want) || !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("Reader: %d bytes, %v; generated client: %d bytes", len(got), err, len(want))
			}
		}
	})
}

// isStatus: err is a gRPC status (the agent's answer), not a decoding error.
func isStatus(err error) bool {
	_, ok := status.FromError(err)
	return err != nil && ok
}
