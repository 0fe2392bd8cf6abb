// Command init is the whole userland of the boot test: the kernel mounts
// the DAX root itself (no initramfs), runs this as PID 1, and it reports
// the root mount and the required-option check, then powers off.
package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/keelvm/keel/kernel-config/required"
)

func main() {
	if err := syscall.Mount("proc", "/proc", "proc", 0, ""); err != nil {
		fmt.Println("KEEL-BOOT-ERROR mount /proc:", err)
	}
	root := "?"
	if b, err := os.ReadFile("/proc/mounts"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 4 && f[1] == "/" {
				root = f[0] + " " + f[2] + " " + f[3]
			}
		}
	}
	fmt.Printf("KEEL-BOOT-ROOT %s\n", root)
	missing, err := required.CheckRunning()
	if err != nil {
		fmt.Println("KEEL-BOOT-ERROR", err)
	}
	for _, m := range missing {
		fmt.Println("KEEL-BOOT-MISSING", m)
	}
	fmt.Printf("KEEL-BOOT-DONE missing=%d\n", len(missing))
	syscall.Sync()
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}
