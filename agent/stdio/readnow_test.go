package stdio

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"sync"
	"testing"
	"time"
)

// recycling is a Buffers that hands out reused buffers (filled with junk,
// so a read that relied on zeroed memory would show) and counts them.
type recycling struct {
	mu        sync.Mutex
	free      [][]byte
	gets, put int
}

func (r *recycling) Get(n int) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gets++
	for i, b := range r.free {
		if cap(b) >= n {
			r.free = append(r.free[:i], r.free[i+1:]...)
			return b[:n]
		}
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = 0xee
	}
	return b
}

func (r *recycling) Put(b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.put++
	r.free = append(r.free, b[:cap(b)])
}

// ReadStdoutNow and the blocking ReadStdoutInto, alternating on one stream
// with buffers that are reused once the data is copied out, lose and
// reorder nothing; ReadStdoutNow never waits, and leaves the end of the
// stream to the blocking read.
func TestReadNowLossless(t *testing.T) {
	const headroom = 22
	n := lossless()
	path, want := payloadFile(t, n)
	s := newIO(t, Options{})
	start(t, s, "cat", path)
	ctx := ctxT(t, 5*time.Minute)
	bufs := &recycling{}
	var got bytes.Buffer
	var now, blocking, wouldBlock int
	lens := []int{32 << 10, 1, 1 << 20, 4093}
	for i := 0; ; i++ {
		ask := lens[i%len(lens)]
		t0 := time.Now()
		b, err := s.ReadStdoutNow(ask, headroom, bufs)
		if d := time.Since(t0); d > 2*time.Second {
			t.Fatalf("ReadStdoutNow took %v", d)
		}
		if errors.Is(err, ErrWouldBlock) {
			wouldBlock++
			b, err = s.ReadStdoutInto(ctx, ask, headroom, bufs)
			if errors.Is(err, io.EOF) {
				break
			}
			blocking++
		} else {
			now++
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(b) <= headroom || len(b)-headroom > ask {
			t.Fatalf("read %d: asked %d, got %d bytes after %d of headroom", i, ask, len(b)-headroom, headroom)
		}
		got.Write(b[headroom:])
		bufs.Put(b)
	}
	if got.Len() != n || sha256.Sum256(got.Bytes()) != want {
		t.Fatalf("got %d bytes sha %x, want %d bytes sha %x", got.Len(), sha256.Sum256(got.Bytes()), n, want)
	}
	if _, err := s.ReadStdoutNow(10, 0, bufs); !errors.Is(err, ErrWouldBlock) {
		t.Errorf("ReadStdoutNow at the end of the stream: %v, want ErrWouldBlock", err)
	}
	if now == 0 {
		t.Errorf("ReadStdoutNow never returned data (%d blocking reads)", blocking)
	}
	bufs.mu.Lock()
	defer bufs.mu.Unlock()
	if bufs.gets != bufs.put {
		t.Errorf("%d buffers taken, %d given back: a read kept or dropped one", bufs.gets, bufs.put)
	}
	t.Logf("%d reads at once, %d blocking (%d would have blocked)", now, blocking, wouldBlock)
}

// Concurrent readers, some never waiting and some blocking, each get whole
// runs of the stream: every 8-byte record arrives exactly once, and within
// each answer in order.
func TestReadNowConcurrentReaders(t *testing.T) {
	const records = 1 << 20 // 8 MiB
	s := newIO(t, Options{})
	_, w, _ := s.ChildFiles()
	wdup, err := dupFile(w)
	if err != nil {
		t.Fatal(err)
	}
	s.CloseChildSide()
	go func(w *os.File) {
		defer w.Close()
		buf := make([]byte, 4096) // <= PIPE_BUF: whole records per write
		for r := uint64(0); r < records; {
			for i := 0; i < len(buf); i += 8 {
				binary.BigEndian.PutUint64(buf[i:], r)
				r++
			}
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	}(wdup)
	ctx := ctxT(t, 2*time.Minute)
	seen := make([]uint8, records)
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bufs := &recycling{}
			for {
				ask := 8 * (1 + g*1000) // whole records
				var b []byte
				var err error
				if g%2 == 0 {
					b, err = s.ReadStdoutNow(ask, 0, bufs)
					if errors.Is(err, ErrWouldBlock) {
						b, err = s.ReadStdoutInto(ctx, ask, 0, bufs)
					}
				} else {
					b, err = s.ReadStdoutInto(ctx, ask, 0, bufs)
				}
				if errors.Is(err, io.EOF) {
					return
				}
				if err != nil {
					errs <- err
					return
				}
				if len(b)%8 != 0 {
					errs <- errors.New("an answer split a record")
					return
				}
				first := binary.BigEndian.Uint64(b)
				mu.Lock()
				for i := 0; i < len(b); i += 8 {
					r := binary.BigEndian.Uint64(b[i:])
					if r != first+uint64(i/8) || r >= records {
						mu.Unlock()
						errs <- errors.New("an answer is not one run of the stream")
						return
					}
					seen[r]++
				}
				mu.Unlock()
				bufs.Put(b)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for r, k := range seen {
		if k != 1 {
			t.Fatalf("record %d arrived %d times", r, k)
		}
	}
}

// ReadStdoutNow neither waits for the turn held by a blocked reader nor
// takes data from under it.
func TestReadNowLeavesTurnHolder(t *testing.T) {
	s := newIO(t, Options{})
	_, w, _ := s.ChildFiles()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan []byte)
	go func() {
		b, _ := s.ReadStdout(ctx, 100)
		done <- b
	}()
	time.Sleep(100 * time.Millisecond) // the blocked reader holds the turn
	if _, err := s.ReadStdoutNow(100, 0, nil); !errors.Is(err, ErrWouldBlock) {
		t.Fatalf("empty stream: %v, want ErrWouldBlock", err)
	}
	w.Write([]byte("hello"))
	if b := <-done; string(b) != "hello" {
		t.Fatalf("the blocked reader got %q", b)
	}
}
