package bufcopy

import (
	"bytes"
	"io"
	"os"
	"slices"
	"testing"
)

// sizeReader records the size of each buffer it is asked to fill, and has a
// WriteTo that fails the test if io.CopyBuffer prefers it.
type sizeReader struct {
	t     *testing.T
	left  int
	sizes []int
}

func (r *sizeReader) Read(p []byte) (int, error) {
	r.sizes = append(r.sizes, len(p))
	if r.left == 0 {
		return 0, io.EOF
	}
	n := min(len(p), r.left)
	r.left -= n
	return n, nil
}

func (r *sizeReader) WriteTo(io.Writer) (int64, error) {
	r.t.Error("WriteTo used")
	return 0, nil
}

// sizeWriter records each write's size, and has a ReadFrom that fails the
// test if io.CopyBuffer prefers it.
type sizeWriter struct {
	t     *testing.T
	sizes []int
}

func (w *sizeWriter) Write(p []byte) (int, error) {
	w.sizes = append(w.sizes, len(p))
	return len(p), nil
}

func (w *sizeWriter) ReadFrom(io.Reader) (int64, error) {
	w.t.Error("ReadFrom used")
	return 0, nil
}

func TestCopyUsesTheGivenBuffer(t *testing.T) {
	const bufSize, total = 100 << 10, 250 << 10
	src := &sizeReader{t: t, left: total}
	dst := &sizeWriter{t: t}
	n, err := Copy(dst, src, make([]byte, bufSize))
	if err != nil || n != total {
		t.Fatalf("Copy: %d bytes, %v; want %d", n, err, total)
	}
	for _, s := range src.sizes {
		if s != bufSize {
			t.Errorf("read into %d bytes, want %d (reads %v)", s, bufSize, src.sizes)
		}
	}
	if want := []int{bufSize, bufSize, total - 2*bufSize}; !slices.Equal(dst.sizes, want) {
		t.Errorf("writes %v, want %v", dst.sizes, want)
	}
}

// TestDiscardFromFile checks the case the package exists for: an *os.File
// source (WriteTo) into io.Discard (ReadFrom) still arrives whole.
func TestDiscardFromFile(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	data := bytes.Repeat([]byte("x"), 300<<10)
	go func() {
		w.Write(data)
		w.Close()
	}()
	n, err := Discard(r, make([]byte, 64<<10))
	if err != nil || n != int64(len(data)) {
		t.Fatalf("Discard: %d bytes, %v; want %d", n, err, len(data))
	}
}
