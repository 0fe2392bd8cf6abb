// Command statxdax prints "dax" or "nodax" for each file argument: whether
// statx(2) reports STATX_ATTR_DAX (the file is mapped straight from
// persistent memory). Built static by the storage VM test and run inside a
// container.
package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

func main() {
	code := 0
	for _, p := range os.Args[1:] {
		var st unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, p, 0, unix.STATX_BASIC_STATS, &st); err != nil {
			fmt.Fprintln(os.Stderr, p, err)
			code = 1
			continue
		}
		if st.Attributes_mask&unix.STATX_ATTR_DAX != 0 && st.Attributes&unix.STATX_ATTR_DAX != 0 {
			fmt.Println(p, "dax")
		} else {
			fmt.Println(p, "nodax")
		}
	}
	os.Exit(code)
}
