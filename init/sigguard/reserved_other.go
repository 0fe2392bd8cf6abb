//go:build !amd64 && !arm64

package sigguard

// nopHandlerPC is 0 where there is no assembly handler: catchReserved
// then only undoes inherited ignores.
func nopHandlerPC() uintptr { return 0 }
