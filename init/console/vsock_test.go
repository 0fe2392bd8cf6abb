package console

import (
	"strings"
	"testing"

	"github.com/mdlayher/vsock"
)

// TestVsockListen binds the real AF_VSOCK listener used for log_vport and
// the debug console (any CID), where the host kernel has vsock.
func TestVsockListen(t *testing.T) {
	const port = 0x7fff1234
	ln, err := VsockListen(port)
	if err != nil {
		t.Skipf("no AF_VSOCK here: %v", err)
	}
	defer ln.Close()
	a, ok := ln.Addr().(*vsock.Addr)
	if !ok || a.Port != port || !strings.Contains(a.String(), "2147422772") {
		t.Fatalf("listening on %v", ln.Addr())
	}
}
