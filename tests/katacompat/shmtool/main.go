// Command shmtool is put into the katacompat test containers (statically
// built) to make and read a SysV shared-memory segment, which busybox
// cannot: "shmtool make KEY TEXT" creates the segment KEY holding TEXT,
// "shmtool read KEY" prints it. A segment lives in the IPC namespace, so
// reading in one container what another made proves they share it.
package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

const size = 4096

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "shmtool:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: shmtool make KEY TEXT | shmtool read KEY")
	}
	key, err := strconv.Atoi(args[1])
	if err != nil {
		return err
	}
	flags := 0o600
	if args[0] == "make" {
		flags |= unix.IPC_CREAT | unix.IPC_EXCL
	}
	id, err := unix.SysvShmGet(key, size, flags)
	if err != nil {
		return fmt.Errorf("shmget %d: %w", key, err)
	}
	b, err := unix.SysvShmAttach(id, 0, 0)
	if err != nil {
		return fmt.Errorf("shmat: %w", err)
	}
	defer unix.SysvShmDetach(b)
	switch args[0] {
	case "make":
		if len(args) != 3 || len(args[2]) >= size {
			return fmt.Errorf("make needs a TEXT under %d bytes", size)
		}
		copy(b, args[2])
	case "read":
		if i := bytes.IndexByte(b, 0); i >= 0 {
			b = b[:i]
		}
		fmt.Println(string(b))
	default:
		return fmt.Errorf("unknown command %q", args[0])
	}
	return nil
}
