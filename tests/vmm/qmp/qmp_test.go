package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// socketPair returns two connected unix stream sockets.
func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "qmp-pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	return conn(fds[0]), conn(fds[1])
}

// fakeQEMU is the server side of a QMP conversation, driven by the test.
type fakeQEMU struct {
	t    *testing.T
	conn net.Conn
	dec  *json.Decoder
}

type request struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
}

func (f *fakeQEMU) send(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		f.t.Error(err)
		return
	}
	if _, err := f.conn.Write(append(b, '\r', '\n')); err != nil {
		f.t.Errorf("fake server write: %v", err)
	}
}

func (f *fakeQEMU) greet() {
	f.send(map[string]any{"QMP": map[string]any{
		"version":      map[string]any{"qemu": map[string]int{"major": 7, "minor": 2, "micro": 22}, "package": "Debian"},
		"capabilities": []string{"oob"},
	}})
}

func (f *fakeQEMU) expect(cmd string) request {
	var r request
	if err := f.dec.Decode(&r); err != nil {
		f.t.Errorf("fake server: reading %s: %v", cmd, err)
		return r
	}
	if r.Execute != cmd {
		f.t.Errorf("fake server: got command %q, want %q", r.Execute, cmd)
	}
	return r
}

func (f *fakeQEMU) reply(r request, ret any) {
	f.send(map[string]any{"return": ret, "id": r.ID})
}

func (f *fakeQEMU) event(name string, data any) {
	f.send(map[string]any{"event": name, "data": data, "timestamp": map[string]int64{"seconds": 1700000000, "microseconds": 250}})
}

// start connects a client to a fake server that greets and accepts
// qmp_capabilities, then runs script in the server goroutine.
func start(t *testing.T, script func(f *fakeQEMU)) (*Client, <-chan struct{}) {
	t.Helper()
	cc, sc := socketPair(t)
	f := &fakeQEMU{t: t, conn: sc, dec: json.NewDecoder(sc)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.greet()
		f.reply(f.expect("qmp_capabilities"), struct{}{})
		script(f)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := New(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); <-done })
	return c, done
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestStatusWithInterleavedEvent(t *testing.T) {
	c, _ := start(t, func(f *fakeQEMU) {
		r := f.expect("query-status")
		f.event("RESUME", nil)
		f.event("DEVICE_DELETED", map[string]string{"device": "nv0"})
		f.reply(r, map[string]any{"status": "running", "running": true, "singlestep": false})
	})
	if v := c.Version(); v.Major != 7 || v.Minor != 2 || v.Micro != 22 || v.Package != "Debian" {
		t.Errorf("version = %+v", v)
	}
	st, err := c.QueryStatus(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != "running" || !st.Running {
		t.Fatalf("status = %+v", st)
	}
	for _, want := range []string{"RESUME", "DEVICE_DELETED"} {
		select {
		case ev := <-c.Events():
			if ev.Name != want {
				t.Fatalf("event %q, want %q", ev.Name, want)
			}
			if !ev.Timestamp.Equal(time.Unix(1700000000, 250000)) {
				t.Errorf("timestamp %v", ev.Timestamp)
			}
			if want == "DEVICE_DELETED" && string(ev.Data) != `{"device":"nv0"}` {
				t.Errorf("data %s", ev.Data)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no %s event", want)
		}
	}
}

func TestErrorReplyIsTyped(t *testing.T) {
	c, _ := start(t, func(f *fakeQEMU) {
		r := f.expect("frobnicate")
		f.send(map[string]any{"error": map[string]string{"class": "CommandNotFound", "desc": "The command frobnicate has not been found"}, "id": r.ID})
	})
	err := c.Execute(ctx(t), "frobnicate", map[string]int{"x": 1}, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" || qe.Command != "frobnicate" {
		t.Fatalf("err = %#v", err)
	}
}

func TestRepliesMatchedByID(t *testing.T) {
	gotA := make(chan struct{})
	c, _ := start(t, func(f *fakeQEMU) {
		a := f.expect("query-a")
		close(gotA)
		b := f.expect("query-b")
		// Answer out of order; each caller must still get its own reply.
		f.reply(b, "B")
		f.reply(a, "A")
	})
	type res struct {
		got string
		err error
	}
	ra := make(chan res, 1)
	go func() {
		var s string
		err := c.Execute(ctx(t), "query-a", nil, &s)
		ra <- res{s, err}
	}()
	// query-b only once the server has read query-a (a fixed sleep could
	// let them race on a loaded machine).
	select {
	case <-gotA:
	case <-time.After(5 * time.Second):
		t.Fatal("the server never read query-a")
	}
	var b string
	if err := c.Execute(ctx(t), "query-b", nil, &b); err != nil || b != "B" {
		t.Fatalf("query-b = %q, %v", b, err)
	}
	if r := <-ra; r.err != nil || r.got != "A" {
		t.Fatalf("query-a = %q, %v", r.got, r.err)
	}
}

func TestReplyWithoutIDGoesToOldest(t *testing.T) {
	c, _ := start(t, func(f *fakeQEMU) {
		f.expect("bad")
		f.send(map[string]any{"error": map[string]string{"class": "GenericError", "desc": "JSON parse error"}})
	})
	var qe *Error
	if err := c.Execute(ctx(t), "bad", nil, nil); !errors.As(err, &qe) || qe.Desc != "JSON parse error" {
		t.Fatalf("err = %v", err)
	}
}

func TestClosedSocketFailsPendingAndLater(t *testing.T) {
	c, _ := start(t, func(f *fakeQEMU) {
		f.expect("query-status")
		f.conn.Close()
	})
	if _, err := c.QueryStatus(ctx(t)); !errors.Is(err, ErrClosed) {
		t.Fatalf("pending command: err = %v, want ErrClosed", err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed")
	}
	if _, ok := <-c.Events(); ok {
		t.Fatal("events channel still open")
	}
	if err := c.Execute(ctx(t), "query-status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("later command: err = %v", err)
	}
	if ch, _ := c.Subscribe(); func() bool { _, ok := <-ch; return ok }() {
		t.Fatal("subscription after close is open")
	}
}

func TestQuitToleratesEOF(t *testing.T) {
	c, _ := start(t, func(f *fakeQEMU) {
		f.expect("quit")
		f.conn.Close()
	})
	if err := c.Quit(ctx(t)); err != nil {
		t.Fatalf("Quit: %v", err)
	}
}

func TestCancelledExecuteDoesNotBreakClient(t *testing.T) {
	release := make(chan struct{})
	c, _ := start(t, func(f *fakeQEMU) {
		slow := f.expect("slow")
		<-release
		f.reply(slow, "late")
		f.reply(f.expect("fast"), "ok")
	})
	cctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := c.Execute(cctx, "slow", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	close(release)
	var s string
	if err := c.Execute(ctx(t), "fast", nil, &s); err != nil || s != "ok" {
		t.Fatalf("fast = %q, %v", s, err)
	}
}

func TestDeviceDelWaitsForItsEvent(t *testing.T) {
	var sentOurs atomic.Bool
	c, _ := start(t, func(f *fakeQEMU) {
		r := f.expect("device_del")
		var args map[string]string
		_ = json.Unmarshal(r.Arguments, &args)
		if args["id"] != "pmem1" {
			t.Errorf("device_del args %s", r.Arguments)
		}
		f.reply(r, struct{}{})
		f.event("DEVICE_DELETED", map[string]string{"device": "other"})
		time.Sleep(50 * time.Millisecond)
		sentOurs.Store(true)
		f.event("DEVICE_DELETED", map[string]string{"device": "pmem1", "path": "/machine/peripheral/pmem1"})
	})
	if err := c.DeviceDel(ctx(t), "pmem1"); err != nil {
		t.Fatal(err)
	}
	if !sentOurs.Load() {
		t.Fatal("DeviceDel returned before DEVICE_DELETED for its device")
	}
}

func TestDeviceAddArguments(t *testing.T) {
	c, _ := start(t, func(f *fakeQEMU) {
		r := f.expect("device_add")
		var args map[string]any
		_ = json.Unmarshal(r.Arguments, &args)
		if args["driver"] != "virtio-blk-pci" || args["id"] != "blk1" || args["drive"] != "d1" {
			t.Errorf("device_add args %s", r.Arguments)
		}
		f.send(map[string]any{"error": map[string]string{"class": "GenericError", "desc": "Duplicate ID"}, "id": r.ID})
	})
	if err := c.DeviceAdd(ctx(t), "", "x", nil); err == nil {
		t.Fatal("empty driver accepted")
	}
	var qe *Error
	if err := c.DeviceAdd(ctx(t), "virtio-blk-pci", "blk1", map[string]any{"drive": "d1"}); !errors.As(err, &qe) {
		t.Fatalf("err = %v", err)
	}
}

func TestHandshakeFailures(t *testing.T) {
	t.Run("silent peer", func(t *testing.T) {
		cc, _ := socketPair(t)
		c, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if _, err := New(c, cc); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("not QMP", func(t *testing.T) {
		cc, sc := socketPair(t)
		go sc.Write([]byte(`{"hello": 1}` + "\n"))
		if _, err := New(ctx(t), cc); err == nil {
			t.Fatal("non-QMP greeting accepted")
		}
	})
	t.Run("garbage", func(t *testing.T) {
		cc, sc := socketPair(t)
		go func() { sc.Write([]byte("\x00\x01garbage")); sc.Close() }()
		if _, err := New(ctx(t), cc); err == nil {
			t.Fatal("garbage accepted")
		}
	})
	t.Run("capabilities refused", func(t *testing.T) {
		cc, sc := socketPair(t)
		f := &fakeQEMU{t: t, conn: sc, dec: json.NewDecoder(sc)}
		go func() {
			f.greet()
			r := f.expect("qmp_capabilities")
			f.send(map[string]any{"error": map[string]string{"class": "CommandNotFound", "desc": "no"}, "id": r.ID})
		}()
		var qe *Error
		if _, err := New(ctx(t), cc); !errors.As(err, &qe) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestFindPCIDevice(t *testing.T) {
	var buses []PCIBus
	raw := `[{"bus":0,"devices":[{"bus":0,"slot":1,"function":0,"qdev_id":"","class_info":{"class":1536},"id":{"vendor":32902,"device":10688}},
	 {"bus":0,"slot":2,"function":0,"qdev_id":"br0","pci_bridge":{"bus":{"number":1},"devices":[{"bus":1,"slot":0,"function":0,"qdev_id":"vsock0","id":{"vendor":6900,"device":4179}}]}}]}]`
	if err := json.Unmarshal([]byte(raw), &buses); err != nil {
		t.Fatal(err)
	}
	d, ok := FindPCIDevice(buses, "vsock0")
	if !ok || d.Bus != 1 || d.ID.Vendor != 0x1af4 {
		t.Fatalf("got %+v %v", d, ok)
	}
	if _, ok := FindPCIDevice(buses, "missing"); ok {
		t.Fatal("found a missing device")
	}
}
