package streamread

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"

	"github.com/keelvm/keel/agent/connlimit"
	pb "github.com/keelvm/keel/protocol/grpc"
)

// Behind connlimit, as in the agent: a client that sends two ReadStdout
// with 1 MiB waiting and a WriteStdin in one write, then reads its replies
// only after longer than FrameTimeout (but well within WriteTimeout), gets
// all three. The reader goroutine sits in answerNow's reply write while the
// WriteStdin frame, begun in the same 4 KiB read, is half read; connlimit's
// frame clock used to run meanwhile and closed this healthy connection as
// "frame not completed in time" after two replies (stock ttrpc answered all
// three).
func TestLateReaderBehindConnlimit(t *testing.T) {
	big := chunk(1<<20, 3)
	f := &fakeStreams{chunks: map[string][][]byte{"c": {big, big}}}
	srv, err := ttrpc.NewServer(ttrpc.WithServerHandshaker(hs(func(c net.Conn) net.Conn { return Wrap(c, Config{Reader: f}) })))
	if err != nil {
		t.Fatal(err)
	}
	pb.RegisterAgentServiceService(srv, &generated{f: f})
	l, err := net.Listen("unix", t.TempDir()+"/s")
	if err != nil {
		t.Fatal(err)
	}
	cl := connlimit.Wrap(l, connlimit.Options{FrameTimeout: 500 * time.Millisecond, WriteTimeout: 20 * time.Second, Log: slog.New(slog.DiscardHandler)})
	go srv.Serve(context.Background(), cl)
	defer srv.Close()
	c, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stdin := chunk(8000, 1)
	var all []byte
	all = append(all, requestFrame(t, 1, "ReadStdout", &pb.ReadStreamRequest{ContainerId: "c", Len: 1 << 20})...)
	all = append(all, requestFrame(t, 3, "ReadStdout", &pb.ReadStreamRequest{ContainerId: "c", Len: 1 << 20})...)
	all = append(all, requestFrame(t, 5, "WriteStdin", &pb.WriteStreamRequest{ContainerId: "c", Data: stdin})...)
	if _, err := c.Write(all); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // 4x FrameTimeout
	for i := range 3 {
		fr := readFrame(t, c)
		var resp ttrpc.Response
		if err := proto.Unmarshal(fr[headerLen:], &resp); err != nil || resp.Status.GetCode() != 0 {
			t.Fatalf("reply %d: %v, status %v", i, err, resp.Status)
		}
		switch id := fr[7]; id {
		case 1, 3:
			var rs pb.ReadStreamResponse
			if err := proto.Unmarshal(resp.Payload, &rs); err != nil || !bytes.Equal(rs.Data, big) {
				t.Fatalf("ReadStdout reply %d: %d bytes, %v", id, len(rs.Data), err)
			}
		case 5:
			var ws pb.WriteStreamResponse
			if err := proto.Unmarshal(resp.Payload, &ws); err != nil || ws.Len != uint32(len(stdin)) {
				t.Fatalf("WriteStdin reply: %v, %v", &ws, err)
			}
		default:
			t.Fatalf("reply for stream %d", id)
		}
	}
	if st := cl.Stats(); st.FrameTimeouts != 0 {
		t.Fatalf("connlimit stats %+v", st)
	}
}
