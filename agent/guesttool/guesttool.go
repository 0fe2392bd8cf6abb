// Package guesttool finds the executables of the guest image the agent
// runs for some requests (mkfs.ext4 for create_filesystem, iptables for
// the iptables RPCs): the agent carries no copy of them, so a request that
// needs one names the tool when the image lacks it.
package guesttool

import (
	"os"
	"os/exec"
	"path/filepath"
)

// Find returns the first regular, executable dirs[i]/name, then, when
// usePath, name as found on $PATH. ok is false when none is there.
func Find(name string, dirs []string, usePath bool) (path string, ok bool) {
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, true
		}
	}
	if usePath {
		if p, err := exec.LookPath(name); err == nil {
			return p, true
		}
	}
	return "", false
}
