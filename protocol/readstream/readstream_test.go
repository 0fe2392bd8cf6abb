package readstream

import (
	"bytes"
	"testing"
	"unsafe"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	pb "github.com/keelvm/keel/protocol/grpc"
)

// filled returns a buffer of Headroom spare bytes then n bytes of data.
func filled(n int) ([]byte, []byte) {
	buf := make([]byte, Headroom+n)
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i*7 + 3)
	}
	copy(buf[Headroom:], data)
	return buf, data
}

// Every varint length size (1 to 3 bytes for what the agent sends, 4 for
// the largest ttrpc message) encodes exactly as proto.Marshal of the
// generated message, decodes back to the data, and is not copied.
func TestEncodeMatchesGeneratedMarshal(t *testing.T) {
	for _, n := range []int{0, 1, 127, 128, 16383, 16384, 32 << 10, 1 << 20, 1<<21 + 5} {
		buf, data := filled(n)
		r, err := Encode(buf)
		if err != nil {
			t.Fatal(err)
		}
		got, err := proto.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		want, err := proto.Marshal(&pb.ReadStreamResponse{Data: data})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("n=%d: encoding differs from proto.Marshal of the generated message (%d vs %d bytes)", n, len(got), len(want))
		}
		if n > 0 && unsafe.SliceData(got) != &buf[Headroom-(len(got)-n)] {
			t.Fatalf("n=%d: proto.Marshal copied the data instead of returning the buffer it was read into", n)
		}
		var back pb.ReadStreamResponse
		if err := proto.Unmarshal(got, &back); err != nil || !bytes.Equal(back.Data, data) {
			t.Fatalf("n=%d: decoded %d bytes, err %v", n, len(back.Data), err)
		}
		if s := proto.Size(r); s != len(want) {
			t.Fatalf("n=%d: proto.Size %d, want %d", n, s, len(want))
		}
		if !proto.Equal(r, &pb.ReadStreamResponse{Data: data}) {
			t.Fatalf("n=%d: reflection does not see the data", n)
		}
		if !bytes.Equal(r.Data(), data) {
			t.Fatalf("n=%d: Data() differs", n)
		}
		// Deterministic marshalling and appending to a buffer work too.
		det, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
		if err != nil || !bytes.Equal(det, want) {
			t.Fatalf("n=%d: deterministic marshal differs: %v", n, err)
		}
		app, err := proto.MarshalOptions{}.MarshalAppend([]byte("xy"), r)
		if err != nil || !bytes.Equal(app, append([]byte("xy"), want...)) {
			t.Fatalf("n=%d: MarshalAppend differs: %v", n, err)
		}
	}
}

// Reflection (which prototext walks field by field) sees the same message
// as the generated type.
func TestEncodeReflection(t *testing.T) {
	buf, data := filled(300)
	r, err := Encode(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := prototext.Format(r), prototext.Format(&pb.ReadStreamResponse{Data: data}); got != want || got == "" {
		t.Fatalf("prototext of the response %q, of the generated message %q", got, want)
	}
	if r.ProtoReflect().Interface() != r {
		t.Fatal("ProtoReflect().Interface() is not the response")
	}
}

func TestEncodeRefusesShortBuffer(t *testing.T) {
	if _, err := Encode(make([]byte, Headroom-1)); err == nil {
		t.Fatal("a buffer with no room for the header was accepted")
	}
}

// BenchmarkMarshal compares the in-place encoding with proto.Marshal of the
// generated message, at Kata's 32 KiB reads.
func BenchmarkMarshal(b *testing.B) {
	buf, data := filled(32 << 10)
	b.Run("generated", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if _, err := proto.Marshal(&pb.ReadStreamResponse{Data: data}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("in-place", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			r, err := Encode(buf)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := proto.Marshal(r); err != nil {
				b.Fatal(err)
			}
		}
	})
}
