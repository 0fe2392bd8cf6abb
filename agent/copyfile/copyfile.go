// Package copyfile implements Kata's CopyFile RPC: the host runtime copies
// files (resolv.conf, hostname, configmaps, secrets) into the guest's
// shared-containers directory when the sandbox has no shared filesystem.
//
// Semantics, matching Kata's agent where it is sound:
//
//   - path must be absolute, clean and strictly under the root
//     (DefaultRoot). Missing parent directories are created with the
//     permission bits (0777) of dir_mode, which Kata's Go runtime sends as an
//     os.FileMode (os.ModeDir|0750 = 0x800001E8); a unix mode (S_IFDIR|0750)
//     is accepted too.
//   - file_mode is the source's unix st_mode: its type bits choose the
//     operation (S_IFDIR a directory, S_IFLNK a symlink whose target is data,
//     S_IFREG or none a regular file); uid and gid are applied, then the
//     mode bits including setuid, setgid and sticky (after the chown, which
//     would clear them).
//   - Regular files arrive in chunks: data is written at offset into
//     "<path>.tmp", and when offset+len(data) == file_size the temporary is
//     truncated to file_size and renamed over path. Offset 0 starts a new
//     transfer (a stale regular temporary is replaced); a chunk may repeat
//     an earlier range, but may not leave a hole. A chunk that fails removes
//     the temporary: the host restarts the file at offset 0.
//
// Nothing a container plants in the shared directory can make a request
// block or write through it: the temporary is created with O_EXCL (never
// opening an existing entry) or, for a later chunk, opened O_PATH and
// checked with fstat before it is reopened for writing, so a FIFO, socket,
// device node or symlink at "<path>.tmp" or at path is refused with
// ErrInTheWay (PermissionDenied) instead of being opened. A symlink
// request replaces whatever non-directory is at path, as Kata's agent does.
// Requests for different paths never wait for each other.
//
// Confinement does not rely on string checks alone: every open and create
// goes through openat2(2) on a descriptor of the root with RESOLVE_BENEATH
// and RESOLVE_NO_MAGICLINKS, so a symlink already in the tree cannot lead
// the agent outside it (absolute and escaping links fail with EXDEV), and
// the final component is never followed (RESOLVE_NO_SYMLINKS).
//
// Symlink targets are not restricted (Kata allows any): the target is data
// interpreted by whoever later follows the link in a container's view of
// the share, and the agent itself never follows links while copying.
package copyfile

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/keelvm/keel/agent/errdefs"

	"golang.org/x/sys/unix"
)

// DefaultRoot is where Kata confines CopyFile (CONTAINER_BASE in Kata).
const DefaultRoot = "/run/kata-containers/shared/containers"

// Limits.
const (
	// MaxChunkLen bounds data in one request. Kata's runtime sends 1 MiB
	// chunks; ttrpc caps a message at 4 MiB.
	MaxChunkLen = 4 << 20
	// MaxPathLen and MaxNameLen are Linux's PATH_MAX and NAME_MAX (bytes).
	MaxPathLen = unix.PathMax
	MaxNameLen = 255
	// TmpSuffix names the partial file beside its destination.
	TmpSuffix = ".tmp"
)

// FieldError reports an invalid request field (InvalidArgument, or Err's
// class) with the Kata field name.
type FieldError struct {
	Field string
	Msg   string
	Err   error // optional class, e.g. ErrHole
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Unwrap returns the error's class: Err if set (ErrHole), else
// errdefs.ErrInvalidArgument.
func (e *FieldError) Unwrap() error {
	if e.Err != nil {
		return e.Err
	}
	return errdefs.ErrInvalidArgument
}

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Sentinels, of class PermissionDenied.
var (
	// ErrEscape is wrapped when resolving path would leave the root.
	ErrEscape = errdefs.New(errdefs.ErrPermissionDenied, "path resolves outside the shared directory")
	// ErrInTheWay is wrapped when an entry of the wrong type (a FIFO,
	// socket, device node, symlink, or a directory where a file goes) sits
	// at path or its temporary.
	ErrInTheWay = errdefs.New(errdefs.ErrPermissionDenied, "refusing an entry of the wrong type")
)

// Request is one CopyFile call, in domain terms (Kata field names).
type Request struct {
	Path     string
	FileSize int64
	FileMode uint32
	DirMode  uint32
	UID, GID int32 // -1 leaves the owner unchanged
	Offset   int64
	Data     []byte
}

// ValidatePath checks that path is absolute, clean and strictly under root
// and returns its components below root. It does not touch the filesystem.
func ValidatePath(root, path string) ([]string, error) {
	switch {
	case path == "":
		return nil, fieldErr("path", "must not be empty")
	case len(path) > MaxPathLen:
		return nil, fieldErr("path", "longer than %d bytes", MaxPathLen)
	case strings.IndexByte(path, 0) >= 0:
		return nil, fieldErr("path", "contains a NUL byte")
	case !filepath.IsAbs(path):
		return nil, fieldErr("path", "%q is not absolute", path)
	case filepath.Clean(path) != path:
		return nil, fieldErr("path", "%q is not clean (want %q)", path, filepath.Clean(path))
	}
	prefix := root + "/"
	if root == "/" {
		prefix = "/"
	}
	rel, ok := strings.CutPrefix(path, prefix)
	if !ok || rel == "" {
		return nil, fieldErr("path", "%q is not under %s", path, root)
	}
	comps := strings.Split(rel, "/")
	for _, c := range comps {
		// Clean already removed "." and inner "..", and rel cannot start
		// with ".." after the prefix; check anyway, cheaply.
		if c == "" || c == "." || c == ".." {
			return nil, fieldErr("path", "%q has a %q component", path, c)
		}
		if len(c)+len(TmpSuffix) > MaxNameLen {
			return nil, fieldErr("path", "component %.20q... longer than %d bytes", c, MaxNameLen-len(TmpSuffix))
		}
	}
	return comps, nil
}

// Go's os.FileMode bits that Kata's runtime may set in dir_mode (the
// runtime sends os.FileMode(0750)|os.ModeDir); values from io/fs.
const (
	goModeDir    = 1 << 31
	goModeSetuid = 1 << 23
	goModeSetgid = 1 << 22
	goModeSticky = 1 << 20
)

// DirPerm returns the permission bits (0777) that directories created for
// parents get, from a dir_mode in Go os.FileMode form (ModeDir plus
// permission, setuid/setgid/sticky bits) or in unix form (S_IFDIR plus
// 07777). Like Kata's agent it keeps only the 0777 bits; any other type bit
// is an error naming dir_mode.
func DirPerm(m uint32) (uint32, error) {
	rest := m
	if m&goModeDir != 0 {
		rest &^= goModeDir | goModeSetuid | goModeSetgid | goModeSticky
	} else {
		if m&unix.S_IFMT == unix.S_IFDIR {
			rest &^= unix.S_IFDIR
		}
		rest &^= unix.S_ISUID | unix.S_ISGID | unix.S_ISVTX
	}
	if rest&^0o777 != 0 {
		return 0, fieldErr("dir_mode", "%#x is neither a directory mode nor Go's os.ModeDir with permission bits", m)
	}
	return rest, nil
}

// kind is the operation chosen by file_mode's type bits.
type kind int

const (
	kindFile kind = iota
	kindDir
	kindSymlink
)

// validate checks everything that does not need the filesystem.
func validate(root string, r *Request) ([]string, kind, error) {
	comps, err := ValidatePath(root, r.Path)
	if err != nil {
		return nil, 0, err
	}
	var k kind
	switch r.FileMode & unix.S_IFMT {
	case 0, unix.S_IFREG:
		k = kindFile
	case unix.S_IFDIR:
		k = kindDir
	case unix.S_IFLNK:
		k = kindSymlink
	default:
		return nil, 0, fieldErr("file_mode", "type %#o is not a regular file, directory or symlink", r.FileMode&unix.S_IFMT)
	}
	if r.FileMode&^uint32(unix.S_IFMT|0o7777) != 0 {
		return nil, 0, fieldErr("file_mode", "%#o has unknown bits", r.FileMode)
	}
	if _, err := DirPerm(r.DirMode); err != nil {
		return nil, 0, err
	}
	if r.UID < -1 {
		return nil, 0, fieldErr("uid", "%d is negative", r.UID)
	}
	if r.GID < -1 {
		return nil, 0, fieldErr("gid", "%d is negative", r.GID)
	}
	if len(r.Data) > MaxChunkLen {
		return nil, 0, fieldErr("data", "%d bytes exceed the %d-byte chunk limit", len(r.Data), MaxChunkLen)
	}
	switch k {
	case kindDir:
		if len(r.Data) != 0 {
			return nil, 0, fieldErr("data", "must be empty for a directory")
		}
	case kindSymlink:
		switch {
		case len(r.Data) == 0:
			return nil, 0, fieldErr("data", "symlink target must not be empty")
		case len(r.Data) >= MaxPathLen:
			return nil, 0, fieldErr("data", "symlink target longer than %d bytes", MaxPathLen-1)
		case strings.IndexByte(string(r.Data), 0) >= 0:
			return nil, 0, fieldErr("data", "symlink target contains a NUL byte")
		}
	case kindFile:
		switch {
		case r.FileSize < 0:
			return nil, 0, fieldErr("file_size", "%d is negative", r.FileSize)
		case r.Offset < 0:
			return nil, 0, fieldErr("offset", "%d is negative", r.Offset)
		case r.Offset > r.FileSize:
			return nil, 0, fieldErr("offset", "%d is beyond file_size %d", r.Offset, r.FileSize)
		case int64(len(r.Data)) > r.FileSize-r.Offset:
			return nil, 0, fieldErr("data", "%d bytes at offset %d overrun file_size %d", len(r.Data), r.Offset, r.FileSize)
		}
	}
	return comps, k, nil
}
