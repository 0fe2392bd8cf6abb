package outputreader

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers of the messages a reply nests: ttrpc's Response (status,
// payload) and, in its payload, Kata's ReadStreamResponse (data).
const (
	responseStatus  protowire.Number = 1
	responsePayload protowire.Number = 2
	readStreamData  protowire.Number = 1
)

// maxStatusSpans bounds how many status fields one reply may carry (proto
// merges repeated occurrences of a message field; servers send one).
const maxStatusSpans = 4

// errMalformed is wrapped by every error about a reply's encoding.
var errMalformed = errors.New("malformed reply")

// span is a range [off, off+n) of a reply body.
type span struct{ off, n int }

// envelope is what decodeBody found in a reply body.
type envelope struct {
	// status holds the bytes of each google.rpc.Status field (proto merges
	// them in order); none, or only empty ones, is OK.
	status  [maxStatusSpans]span
	nStatus int
	// data is the ReadStreamResponse's data (the last data field of the
	// last payload, as proto decodes it); n == 0 is the end of the stream.
	data span
	// complete: the whole body was decoded. Otherwise the data runs to the
	// end of the body and only its first bytes (if any) were in b: what is
	// before the data is decoded and valid, what is after is data.
	complete bool
}

// errMore is decodeBody's "b is too short to say anything yet: decode
// again with more of the body".
var errMore = errors.New("more of the reply needed")

// decodeBody decodes b, the first bytes (all, or a prefix) of a ttrpc
// Response body of bodyLen bytes, as the generated client would decode it:
// proto.Unmarshal into a Response, then its payload into a
// ReadStreamResponse. It returns errMore when b is too short to say
// anything yet, and answers as soon as everything after the decoded part
// is the data, so that the data itself never has to pass through b. The
// spans are offsets into the body.
func decodeBody(b []byte, bodyLen int) (env envelope, err error) {
	if len(b) > bodyLen {
		b = b[:bodyLen]
	}
	whole := len(b) == bodyLen
	i := 0
	for i < bodyLen {
		if i >= len(b) {
			return env, errMore
		}
		num, typ, n := consumeTag(b[i:])
		if n < 0 {
			return env, bad(n, whole, "a field tag of the response", 0)
		}
		if typ != protowire.BytesType || (num != responseStatus && num != responsePayload) {
			// Unknown to the generated Response (a known number with
			// another wire type is unknown to proto too): skip it.
			m := protowire.ConsumeFieldValue(num, typ, b[i+n:])
			if m < 0 {
				return env, bad(m, whole, "field %d of the response", num)
			}
			i += n + m
			continue
		}
		l, m := protowire.ConsumeVarint(b[i+n:])
		if m < 0 {
			return env, bad(m, whole, "the length of field %d of the response", num)
		}
		start := i + n + m
		if l > uint64(bodyLen-start) {
			return env, fmt.Errorf("%w: field %d of the response is %d bytes, past the frame's end", errMalformed, num, l)
		}
		end := start + int(l)
		if num == responseStatus {
			if end > len(b) {
				return env, errMore
			}
			if env.nStatus == maxStatusSpans {
				return env, fmt.Errorf("%w: more than %d status fields", errMalformed, maxStatusSpans)
			}
			env.status[env.nStatus] = span{start, int(l)}
			env.nStatus++
			i = end
			continue
		}
		// The payload: a ReadStreamResponse. A later payload replaces an
		// earlier one (bytes), and within one a later data field replaces
		// an earlier one.
		env.data = span{}
		j := start
		for j < end {
			if j >= len(b) {
				return env, errMore
			}
			pb := b[j:min(end, len(b))]
			wholeField := end <= len(b)
			num, typ, n := consumeTag(pb)
			if n < 0 {
				return env, bad(n, wholeField, "a field tag of the payload", 0)
			}
			if num != readStreamData || typ != protowire.BytesType {
				m := protowire.ConsumeFieldValue(num, typ, pb[n:])
				if m < 0 {
					return env, bad(m, wholeField, "field %d of the payload", num)
				}
				j += n + m
				continue
			}
			l, m := protowire.ConsumeVarint(pb[n:])
			if m < 0 {
				return env, bad(m, wholeField, "the data's length", 0)
			}
			ds := j + n + m
			if l > uint64(end-ds) {
				return env, fmt.Errorf("%w: data of %d bytes runs past its payload's end", errMalformed, l)
			}
			env.data = span{ds, int(l)}
			j = ds + int(l)
			if j > len(b) {
				if j == end && end == bodyLen {
					return env, nil // the rest of the body is the data
				}
				return env, errMore
			}
		}
		i = end
	}
	env.complete = true
	return env, nil
}

// bad turns protowire error code n, met while decoding what (a format
// with num's %d, or none), into decodeBody's answer: errMore when the bytes
// merely ran out before the end of what was being decoded (whole: all of
// it was in b), else an error. what is formatted on the error path only:
// errMore, met on every reply whose envelope arrives in pieces, allocates
// nothing.
func bad(n int, whole bool, what string, num protowire.Number) error {
	perr := protowire.ParseError(n)
	if !whole && errors.Is(perr, io.ErrUnexpectedEOF) {
		return errMore
	}
	if strings.Contains(what, "%d") {
		what = fmt.Sprintf(what, num)
	}
	return fmt.Errorf("%w: %s: %v", errMalformed, what, perr)
}

// consumeTag is protowire.ConsumeTag refusing, as proto.Unmarshal does,
// field numbers above protowire.MaxValidNumber (ConsumeTag checks only
// the lower bound and truncates the number to 32 bits).
func consumeTag(b []byte) (protowire.Number, protowire.Type, int) {
	v, n := protowire.ConsumeVarint(b)
	if n < 0 {
		return 0, 0, n
	}
	if v>>3 > uint64(protowire.MaxValidNumber) || v>>3 < uint64(protowire.MinValidNumber) {
		return 0, 0, -2 // protowire's code for an invalid field number
	}
	num, typ := protowire.DecodeTag(v)
	return num, typ, n
}
