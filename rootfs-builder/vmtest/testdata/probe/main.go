// Command probe reports its effective uid and capabilities and whether it
// can read the file named by its argument. rootfs-builder's VM test runs it
// as an unprivileged user from binaries that carry a setuid bit, a file
// capability or neither, to prove those survive the image build.
package main

import (
	"fmt"
	"os"
	"strings"
)

func main() {
	capEff := "?"
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
				capEff = strings.TrimSpace(v)
			}
		}
	}
	fmt.Printf("euid=%d capeff=%s ", os.Geteuid(), capEff)
	b, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Printf("read=ERR:%v\n", err)
		return
	}
	fmt.Printf("read=OK:%s\n", strings.TrimSpace(string(b)))
}
