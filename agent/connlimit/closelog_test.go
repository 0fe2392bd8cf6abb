package connlimit

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// records keeps the log records a Listener writes.
type records struct {
	mu   sync.Mutex
	msgs []slog.Record
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	r.msgs = append(r.msgs, rec)
	r.mu.Unlock()
	return nil
}
func (r *records) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *records) WithGroup(string) slog.Handler      { return r }

// find waits up to d for a record with msg and returns it.
func (r *records) find(msg string, d time.Duration) (slog.Record, bool) {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		r.mu.Lock()
		for _, rec := range r.msgs {
			if rec.Message == msg {
				r.mu.Unlock()
				return rec, true
			}
		}
		r.mu.Unlock()
	}
	return slog.Record{}, false
}

// A client that goes away while a request of it awaits its reply is logged
// at info level with the count, so a host that reports "ttrpc: closed"
// can be told apart from the agent closing the connection (which its limits
// log at warn level).
func TestClientGoneWithPendingLogged(t *testing.T) {
	rec := &records{}
	l, sock := serve(t, Options{Log: slog.New(rec)})
	c := dial(t, sock)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pend(ctx, c)
	// The pending request has reached the server once the connection is
	// no longer idle.
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		l.mu.Lock()
		var busy bool
		for cc := range l.conns {
			_, idle := cc.idle()
			busy = busy || !idle
		}
		l.mu.Unlock()
		if busy {
			break
		}
		if time.Now().After(end) {
			t.Fatal("the pending request never reached the server")
		}
	}
	c.Close()
	r, ok := rec.find("connection ended by the client with requests awaiting a reply", 10*time.Second)
	if !ok {
		t.Fatal("no log record for a client gone with a request pending")
	}
	if r.Level != slog.LevelInfo {
		t.Errorf("logged at %v, want info", r.Level)
	}
	var pending int64
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "pending" {
			pending = a.Value.Int64()
		}
		return true
	})
	if pending != 1 {
		t.Errorf("pending = %d, want 1", pending)
	}
	if _, ok := rec.find("closing connection with requests awaiting a reply", 200*time.Millisecond); ok {
		t.Error("a connection the client ended is also logged as closed by the server")
	}
}
