package ttrpcframe

import (
	"encoding/binary"
	"testing"
)

func frame(typ byte, body int) []byte {
	b := make([]byte, HeaderLen+body)
	binary.BigEndian.PutUint32(b[0:4], uint32(body))
	binary.BigEndian.PutUint32(b[4:8], 1)
	b[8] = typ
	return b
}

// TestFeedAnySplit: whatever pieces a stream of frames arrives in, the
// follower counts each header of the asked type once, ends outside a frame
// exactly at frame boundaries, and reports every frame end.
func TestFeedAnySplit(t *testing.T) {
	var stream []byte
	var bounds []int // offsets just past each frame
	for _, f := range [][]byte{frame(1, 5), frame(2, 0), frame(1, 4096), frame(3, 1), frame(2, 70000)} {
		stream = append(stream, f...)
		bounds = append(bounds, len(stream))
	}
	for _, piece := range []int{1, 3, 9, 10, 11, 4096, len(stream)} {
		var f Follower
		requests, ends := 0, 0
		for off := 0; off < len(stream); off += piece {
			end := min(off+piece, len(stream))
			ended, n := f.Feed(stream[off:end], 1)
			requests += n
			if ended {
				ends++
			}
			atBound := false
			for _, b := range bounds {
				atBound = atBound || b == end
			}
			if f.Mid() == atBound {
				t.Fatalf("piece %d: at offset %d Mid()=%v, frame boundary=%v", piece, end, f.Mid(), atBound)
			}
		}
		if requests != 2 {
			t.Errorf("piece %d: %d request headers, want 2", piece, requests)
		}
		if piece == 1 && ends != len(bounds) {
			t.Errorf("byte by byte: %d frame ends, want %d", ends, len(bounds))
		}
	}
}

// TestFeedTypeZeroCountsNothing: 0 is not a ttrpc message type.
func TestFeedTypeZeroCountsNothing(t *testing.T) {
	var f Follower
	if _, n := f.Feed(append(frame(1, 0), frame(2, 0)...), 0); n != 0 {
		t.Fatalf("counted %d headers of type 0", n)
	}
}
