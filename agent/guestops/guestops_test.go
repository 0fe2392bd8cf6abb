package guestops

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/keelvm/keel/protocol/grpc"
)

func TestSetGuestDateTime(t *testing.T) {
	var got *unix.Timeval
	h := &Handler{SetTime: func(tv *unix.Timeval) error { got = tv; return nil }} // never the host clock
	ctx := context.Background()
	for _, ok := range []*pb.SetGuestDateTimeRequest{{Sec: 1700000000, Usec: 999999}, {Sec: 0}, {Sec: MaxSec}} {
		got = nil
		if _, err := h.SetGuestDateTime(ctx, ok); err != nil {
			t.Fatalf("%v: %v", ok, err)
		}
		if got == nil || got.Sec != ok.Sec || got.Usec != ok.Usec {
			t.Fatalf("setter got %+v for %v", got, ok)
		}
	}
	for _, c := range []struct {
		req   *pb.SetGuestDateTimeRequest
		field string
	}{
		{&pb.SetGuestDateTimeRequest{Sec: -1}, "Sec"},
		{&pb.SetGuestDateTimeRequest{Sec: MaxSec + 1}, "Sec"},
		{&pb.SetGuestDateTimeRequest{Sec: 1, Usec: 1e6}, "Usec"},
		{&pb.SetGuestDateTimeRequest{Sec: 1, Usec: -1}, "Usec"},
		{nil, "empty request"},
	} {
		got = nil
		_, err := h.SetGuestDateTime(ctx, c.req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), c.field) || got != nil {
			t.Errorf("%v: %v (setter called: %v)", c.req, err, got != nil)
		}
	}
	h.SetTime = func(*unix.Timeval) error { return unix.EPERM }
	if _, err := h.SetGuestDateTime(ctx, &pb.SetGuestDateTimeRequest{Sec: 1}); status.Code(err) != codes.Internal {
		t.Fatalf("setter failure: %v", err)
	}
}

func TestReseedRandomDev(t *testing.T) {
	var got []byte
	h := &Handler{Seed: func(b []byte) error { got = b; return nil }}
	ctx := context.Background()
	data := bytes.Repeat([]byte{7}, MaxReseedLen)
	if _, err := h.ReseedRandomDev(ctx, &pb.ReseedRandomDevRequest{Data: data}); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("at the limit: %v", err)
	}
	for _, req := range []*pb.ReseedRandomDevRequest{nil, {}, {Data: make([]byte, MaxReseedLen+1)}} {
		got = nil
		_, err := h.ReseedRandomDev(ctx, req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "data:") || got != nil {
			t.Errorf("%d bytes: %v", len(req.GetData()), err)
		}
	}
	h.Seed = func([]byte) error { return errors.New("boom") }
	if _, err := h.ReseedRandomDev(ctx, &pb.ReseedRandomDevRequest{Data: []byte{1}}); status.Code(err) != codes.Internal {
		t.Fatalf("seed failure: %v", err)
	}
}

// The default seeder really issues RNDADDENTROPY (harmless: it only adds
// entropy). Crediting needs CAP_SYS_ADMIN.
func TestReseedRealDevice(t *testing.T) {
	if unix.Geteuid() != 0 {
		t.Skip("needs root")
	}
	h := &Handler{}
	if _, err := h.ReseedRandomDev(context.Background(), &pb.ReseedRandomDevRequest{Data: []byte("keel test seed 0123456789abcdef")}); err != nil {
		t.Fatal(err)
	}
}
