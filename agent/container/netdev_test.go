package container

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// /proc/<pid>/net/dev as the kernel prints it: a name padded to 6, the
// receive bytes abutting the colon once they are wide, 8 receive and 8
// transmit columns; header lines are skipped.
func TestReadNetDev(t *testing.T) {
	p := filepath.Join(t.TempDir(), "dev")
	data := "Inter-|   Receive                                                |  Transmit\n" +
		" face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n" +
		"    lo:    1234      10    0    0    0     0          0         0     1234      10    0    0    0     0       0          0\n" +
		"  eth0:123456789012 99 1 2 0 0 0 5 777 88 3 4 0 0 0 0\n"
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := readNetDev(p)
	if err != nil {
		t.Fatal(err)
	}
	want := []NetDev{
		{Name: "lo", RxBytes: 1234, RxPackets: 10, TxBytes: 1234, TxPackets: 10},
		{Name: "eth0", RxBytes: 123456789012, RxPackets: 99, RxErrors: 1, RxDropped: 2, TxBytes: 777, TxPackets: 88, TxErrors: 3, TxDropped: 4},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
}
