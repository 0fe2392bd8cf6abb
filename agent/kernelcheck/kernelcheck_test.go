package kernelcheck

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keelvm/keel/kernel-config/required"
)

var gaps = []required.Missing{
	{Feature: "virtio", Option: "VIRTIO_MMIO", Got: "n"},
	{Feature: "shared-filesystems", Option: "FUSE_FS", Got: "m"},
}

var gapLines = []string{"keel.kernel.missing=virtio:VIRTIO_MMIO=n", "keel.kernel.missing=shared-filesystems:FUSE_FS=m"}

func TestLines(t *testing.T) {
	for _, tc := range []struct {
		name    string
		missing []required.Missing
		err     error
		want    []string
	}{
		{"complete kernel", nil, nil, []string{}},
		{"gaps", gaps, nil, gapLines},
		{"no /proc/config.gz", nil, required.ErrNotAvailable, []string{"keel.kernel.config=unavailable"}},
		{"unreadable", gaps, errors.New("gzip: invalid header"), []string{"keel.kernel.config=unavailable"}},
	} {
		if got := Lines(tc.missing, tc.err); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: Lines = %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestCheckRunsOnce: however many GetGuestDetails ask, sequentially or at
// once, before or after Start, the kernel's configuration is read once and
// every caller gets the same answer.
func TestCheckRunsOnce(t *testing.T) {
	var runs atomic.Int32
	r := New(func() ([]required.Missing, error) {
		runs.Add(1)
		time.Sleep(10 * time.Millisecond) // let the callers pile up
		return gaps, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			got, err := r.Lines(ctx)
			if err != nil || !reflect.DeepEqual(got, gapLines) {
				t.Errorf("Lines = %q, %v; want %q", got, err, gapLines)
			}
		})
	}
	r.Start()
	wg.Wait()
	for range 5 {
		r.Start()
		got, err := r.Lines(ctx)
		if err != nil || !reflect.DeepEqual(got, gapLines) {
			t.Errorf("Lines = %q, %v; want %q", got, err, gapLines)
		}
		got[0] = "changed by the caller" // a copy: the next caller must not see it
	}
	if n := runs.Load(); n != 1 {
		t.Errorf("the check ran %d times, want once", n)
	}
}

// TestStartRunsInBackground: Start returns at once and the check runs
// without anybody asking, so a later GetGuestDetails finds it done.
func TestStartRunsInBackground(t *testing.T) {
	ran := make(chan struct{})
	release := make(chan struct{})
	r := New(func() ([]required.Missing, error) {
		close(ran)
		<-release
		return nil, required.ErrNotAvailable
	})
	r.Start()
	select {
	case <-ran:
	case <-time.After(time.Minute):
		t.Fatal("Start did not start the check")
	}
	close(release)
	got, err := r.Lines(context.Background())
	if err != nil || !reflect.DeepEqual(got, []string{"keel.kernel.config=unavailable"}) {
		t.Errorf("Lines = %q, %v", got, err)
	}
}

// TestLinesWaitIsBounded: a check that does not finish holds a caller only
// as long as its context; a later caller still gets the result.
func TestLinesWaitIsBounded(t *testing.T) {
	release := make(chan struct{})
	r := New(func() ([]required.Missing, error) {
		<-release
		return gaps, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	got, err := r.Lines(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || got != nil {
		t.Fatalf("Lines with a check stuck = %q, %v; want context.DeadlineExceeded", got, err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("Lines returned %v after its deadline", d)
	}
	close(release)
	got, err = r.Lines(context.Background())
	if err != nil || !reflect.DeepEqual(got, gapLines) {
		t.Errorf("Lines after the check finished = %q, %v", got, err)
	}
}

// TestRunningMatchesRequired: the yielding scan of the agent answers as
// required's own check, on a crafted config.gz and on this host's kernel.
func TestRunningMatchesRequired(t *testing.T) {
	gz := filepath.Join(t.TempDir(), "config.gz")
	f, err := os.Create(gz)
	if err != nil {
		t.Fatal(err)
	}
	zw := gzip.NewWriter(f)
	for _, ft := range required.Features() {
		for _, o := range ft.Options {
			if o != "VIRTIO_VSOCKETS" && o != "FUSE_FS" {
				fmt.Fprintf(zw, "CONFIG_%s=y\n", o)
			}
		}
		fmt.Fprintf(zw, "# padding so the scan reads many chunks\n%s\n", strings.Repeat("# x\n", 2000))
	}
	fmt.Fprintln(zw, "CONFIG_FUSE_FS=m")
	zw.Close()
	f.Close()
	m, err := checkYielding(gz)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"keel.kernel.missing=agent-transport:VIRTIO_VSOCKETS=n", "keel.kernel.missing=shared-filesystems:FUSE_FS=m"}
	if got := Lines(m, nil); !reflect.DeepEqual(got, want) {
		t.Errorf("checkYielding: %q, want %q", got, want)
	}
	if _, err := checkYielding(filepath.Join(t.TempDir(), "absent")); !errors.Is(err, required.ErrNotAvailable) {
		t.Errorf("no config.gz: %v, want ErrNotAvailable", err)
	}
	m1, err1 := Running()
	m2, err2 := required.CheckRunning()
	if !reflect.DeepEqual(Lines(m1, err1), Lines(m2, err2)) {
		t.Errorf("Running: %v, %v; required.CheckRunning: %v, %v", m1, err1, m2, err2)
	}
}

// TestScanYields: with one scheduler slot (a one-vCPU guest), a goroutine
// that became runnable while the check scans gets to run before the next
// chunk is read, without waiting for the scheduler to preempt the scan.
func TestScanYields(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	ran := make(chan struct{})
	r := yielding{strings.NewReader("CONFIG_X=y\n")}
	go close(ran) // runnable, not run: this goroutine keeps the only slot
	// Three reads: after a yield the scheduler takes the yielder back
	// first one round in 61 (its fairness check of the global queue), never
	// three rounds running.
	for range 3 {
		if _, err := r.Read(make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-ran:
	default:
		t.Fatal("the other goroutine did not run during the read: the scan does not yield")
	}
}
