// Package bufcopy copies with exactly the buffer it is given, for benchmarks
// whose point is the size of each read(2) and write(2).
//
// io.CopyBuffer ignores its buffer when the source is an io.WriterTo or the
// destination an io.ReaderFrom: io.Discard reads with a pooled 8 KiB buffer,
// and an *os.File source tries sendfile(2) and then copies with io.Copy's own
// 32 KiB buffer. Copy hides both methods.
package bufcopy

import "io"

// Copy is io.CopyBuffer(dst, src, buf) with every read from src and every
// write to dst going through buf (reads of len(buf) at most).
func Copy(dst io.Writer, src io.Reader, buf []byte) (int64, error) {
	return io.CopyBuffer(onlyWriter{dst}, onlyReader{src}, buf)
}

// Discard reads src to EOF into buf, as Copy(io.Discard, src, buf).
func Discard(src io.Reader, buf []byte) (int64, error) {
	return Copy(io.Discard, src, buf)
}

// onlyReader is an io.Reader and nothing else (no WriteTo).
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// onlyWriter is an io.Writer and nothing else (no ReadFrom).
type onlyWriter struct{ w io.Writer }

func (o onlyWriter) Write(p []byte) (int, error) { return o.w.Write(p) }
