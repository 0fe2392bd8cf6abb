package passfd

import (
	"os"
	"syscall"
)

// unixRights builds the SCM_RIGHTS message for f without f.Fd(), which
// would switch a poller-managed file to blocking mode.
func unixRights(f *os.File) []byte {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	var oob []byte
	if rc.Control(func(fd uintptr) { oob = syscall.UnixRights(int(fd)) }) != nil {
		return nil
	}
	return oob
}
