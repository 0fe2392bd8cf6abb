package cpio

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Header is one decoded newc header. Mode holds the raw st_mode bits.
type Header struct {
	Name      string
	Ino       uint32
	Mode      uint32
	UID, GID  uint32
	Nlink     uint32
	MTime     uint32
	Size      uint32
	DevMajor  uint32
	DevMinor  uint32
	RdevMajor uint32
	RdevMinor uint32
}

// maxNameLen bounds header names so a hostile archive cannot make the
// reader allocate gigabytes (PATH_MAX is 4096 on Linux).
const maxNameLen = 4096

// Reader decodes an uncompressed newc archive, for tests and inspection.
type Reader struct {
	r    *bufio.Reader
	off  int64
	left int64 // unread data bytes of the current entry
	pad  int64 // padding after the current entry's data
	done bool
}

// NewReader returns a Reader reading from r.
func NewReader(r io.Reader) *Reader {
	return &Reader{r: bufio.NewReader(r)}
}

func (r *Reader) skip(n int64) error {
	m, err := io.CopyN(io.Discard, r.r, n)
	r.off += m
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// Next advances to the next entry and returns its header. It returns io.EOF
// after the trailer.
func (r *Reader) Next() (*Header, error) {
	if r.done {
		return nil, io.EOF
	}
	if err := r.skip(r.left + r.pad); err != nil {
		return nil, err
	}
	r.left, r.pad = 0, 0
	var raw [headerLen]byte
	n, err := io.ReadFull(r.r, raw[:])
	r.off += int64(n)
	if err != nil {
		if err == io.EOF {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if string(raw[:6]) != Magic {
		return nil, fmt.Errorf("cpio: bad magic %q at offset %d", raw[:6], r.off-headerLen)
	}
	var f [13]uint32
	for i := range f {
		v, err := strconv.ParseUint(string(raw[6+8*i:14+8*i]), 16, 32)
		if err != nil {
			return nil, fmt.Errorf("cpio: bad header field %d at offset %d", i, r.off-headerLen)
		}
		f[i] = uint32(v)
	}
	h := &Header{Ino: f[0], Mode: f[1], UID: f[2], GID: f[3], Nlink: f[4], MTime: f[5], Size: f[6],
		DevMajor: f[7], DevMinor: f[8], RdevMajor: f[9], RdevMinor: f[10]}
	namesize := int64(f[11])
	if namesize < 1 || namesize > maxNameLen {
		return nil, fmt.Errorf("cpio: bad name size %d", namesize)
	}
	name := make([]byte, namesize)
	n, err = io.ReadFull(r.r, name)
	r.off += int64(n)
	if err != nil {
		return nil, io.ErrUnexpectedEOF
	}
	if name[namesize-1] != 0 {
		return nil, errors.New("cpio: name is not NUL-terminated")
	}
	h.Name = string(name[:namesize-1])
	if err := r.skip((4 - r.off%4) % 4); err != nil {
		return nil, err
	}
	if h.Name == Trailer {
		r.done = true
		return nil, io.EOF
	}
	r.left = int64(h.Size)
	r.pad = (4 - (r.off+r.left)%4) % 4
	return h, nil
}

// Read reads the current entry's data.
func (r *Reader) Read(b []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > r.left {
		b = b[:r.left]
	}
	n, err := r.r.Read(b)
	r.left -= int64(n)
	r.off += int64(n)
	if err == io.EOF && r.left > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}
