//go:build amd64 || arm64

package sigguard

// nopHandler does nothing; it is never called from Go, only installed as a
// signal handler (see catchReserved).
//
//lint:ignore U1000 used by address only (nopHandlerPC), from assembly
func nopHandler()

// nopHandlerPC is nopHandler's entry address.
func nopHandlerPC() uintptr
