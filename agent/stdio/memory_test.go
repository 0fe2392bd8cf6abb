package stdio

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"
)

// Issue 11 item 4: a pending ReadStdout took a MaxReadLen (1 MiB) pooled
// buffer before blocking, so 3,000 pending reads with len=1 pinned 3 GB.
// A pending read now holds no buffer: the heap grows by a few hundred bytes
// per pending call (its goroutine's stack is not heap), whatever len asked.
func TestPendingReadsCostNoBuffers(t *testing.T) {
	const streams, perStream = 100, 30 // 3,000 pending reads
	ios := make([]*IO, streams)
	for i := range ios {
		ios[i] = newIO(t, Options{})
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	before := heapInUse()
	var started, done sync.WaitGroup
	results := make(chan int, streams*perStream)
	for _, s := range ios {
		for j := 0; j < perStream; j++ {
			started.Add(1)
			done.Add(1)
			go func() {
				defer done.Done()
				started.Done()
				ln := 1
				if j%2 == 1 {
					ln = MaxReadLen // a large len must not cost more while pending
				}
				b, err := s.ReadStdout(ctx, ln)
				if err == nil {
					results <- len(b)
				}
			}()
		}
	}
	started.Wait()
	waitBlocked(t, streams*perStream)
	after := heapInUse()
	per := (int64(after) - int64(before)) / (streams * perStream)
	t.Logf("heap in use: %d -> %d bytes: %d bytes per pending read", before, after, per)
	if per > 4<<10 {
		t.Fatalf("%d bytes of heap per pending read, want a few hundred (MaxReadLen is %d)", per, MaxReadLen)
	}

	// The reads are real: one byte written per stream wakes exactly one.
	for _, s := range ios {
		_, w, _ := s.ChildFiles()
		if _, err := w.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	for range streams {
		select {
		case n := <-results:
			if n != 1 {
				t.Fatalf("read %d bytes, want 1", n)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a pending read did not return the written byte")
		}
	}
	cancel()
	done.Wait()
}

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// waitBlocked waits until at least n goroutines are parked (in the poller
// or waiting for their turn on a stream), so the measurement sees every
// read pending rather than still starting.
func waitBlocked(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		buf := make([]byte, 64<<20)
		dump := string(buf[:runtime.Stack(buf, true)])
		parked := countSubstr(dump, "[IO wait") + countSubstr(dump, "[select")
		if parked >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d reads parked", parked, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func countSubstr(s, sub string) int {
	n := 0
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			n++
		}
	}
	return n
}
