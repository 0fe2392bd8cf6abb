// Package ttrpcframe follows ttrpc's framing over a byte stream that is
// seen in arbitrary pieces (a connection's reads or writes), without
// buffering it: each frame is a 10-byte header (body length uint32, stream
// id uint32, message type, flags; big endian) and the body.
package ttrpcframe

import "encoding/binary"

// HeaderLen is the size of a ttrpc frame header.
const HeaderLen = 10

// Follower tracks where a stream is within its frames. The zero value
// starts at a frame boundary.
type Follower struct {
	hdr  [HeaderLen]byte
	hdrN int
	body uint64
}

// Feed advances over b. It reports whether a frame ended within b and how
// many headers of message type typ were completed in b (0 counts none:
// ttrpc has no message type 0).
func (f *Follower) Feed(b []byte, typ byte) (ended bool, headers int) {
	for len(b) > 0 {
		if f.body > 0 {
			k := min(uint64(len(b)), f.body)
			f.body -= k
			b = b[k:]
			ended = ended || f.body == 0
			continue
		}
		k := copy(f.hdr[f.hdrN:], b)
		f.hdrN += k
		b = b[k:]
		if f.hdrN == HeaderLen {
			f.hdrN = 0
			f.body = uint64(binary.BigEndian.Uint32(f.hdr[:4]))
			ended = ended || f.body == 0
			if typ != 0 && f.hdr[8] == typ {
				headers++
			}
		}
	}
	return ended, headers
}

// Mid reports whether the stream is inside a frame (a header or a body
// begun and not finished).
func (f *Follower) Mid() bool { return f.hdrN > 0 || f.body > 0 }
