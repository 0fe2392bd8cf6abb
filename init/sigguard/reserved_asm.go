//go:build amd64 || arm64

package sigguard

// nopHandler does nothing; it is never called from Go, only installed as a
// signal handler (see catchReserved).
func nopHandler()

// nopHandlerPC is nopHandler's entry address.
func nopHandlerPC() uintptr
