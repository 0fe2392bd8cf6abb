package uevent

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

const blkAdd = "add@/devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio3/block/vda\x00" +
	"ACTION=add\x00DEVPATH=/devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio3/block/vda\x00" +
	"SUBSYSTEM=block\x00MAJOR=254\x00MINOR=0\x00DEVNAME=vda\x00DEVTYPE=disk\x00DISKSEQ=9\x00SEQNUM=2087\x00"

func TestParse(t *testing.T) {
	ev, err := Parse([]byte(blkAdd))
	if err != nil {
		t.Fatal(err)
	}
	want := Event{Action: "add", DevPath: "/devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio3/block/vda",
		Subsystem: "block", DevName: "vda", DevType: "disk", Major: "254", Minor: "0", Seqnum: 2087}
	got := ev
	got.Vars = nil
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	if ev.Vars["DISKSEQ"] != "9" || len(ev.Vars) != 9 {
		t.Fatalf("vars %v", ev.Vars)
	}
}

func TestParseRefuses(t *testing.T) {
	many := "add@/devices/x\x00ACTION=add\x00DEVPATH=/devices/x" + strings.Repeat("\x00K=v", MaxVars)
	for name, msg := range map[string]string{
		"empty":          "",
		"no header":      "ACTION=add\x00DEVPATH=/x\x00",
		"udev":           "libudev\x00\xfe\xed\xca\xfe",
		"relative path":  "add@devices/x\x00ACTION=add\x00DEVPATH=devices/x\x00",
		"header differs": "add@/devices/x\x00ACTION=add\x00DEVPATH=/devices/y\x00",
		"action differs": "add@/devices/x\x00ACTION=remove\x00DEVPATH=/devices/x\x00",
		"no equals":      "add@/devices/x\x00ACTION=add\x00DEVPATH=/devices/x\x00JUNK\x00",
		"bad seqnum":     "add@/devices/x\x00ACTION=add\x00DEVPATH=/devices/x\x00SEQNUM=-1\x00",
		"too many vars":  many,
		"too long":       "add@/devices/x\x00ACTION=add\x00DEVPATH=/devices/x\x00K=" + strings.Repeat("v", MaxMessage),
	} {
		if ev, err := Parse([]byte(msg)); err == nil {
			t.Errorf("%s: parsed as %+v", name, ev)
		}
	}
}

// FuzzParse: any input is parsed or refused without panicking; what parses
// respects the limits and survives a round trip through Bytes.
func FuzzParse(f *testing.F) {
	f.Add([]byte(blkAdd))
	f.Add([]byte("remove@/devices/x\x00ACTION=remove\x00DEVPATH=/devices/x\x00SUBSYSTEM=net\x00INTERFACE=eth1\x00"))
	f.Add([]byte("libudev\x00"))
	f.Add([]byte("add@/\x00ACTION=add\x00DEVPATH=/\x00A==\x00"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		ev, err := Parse(msg)
		if err != nil {
			return
		}
		if len(ev.Vars) > MaxVars || len(msg) > MaxMessage {
			t.Fatalf("limits not enforced: %d vars from %d bytes", len(ev.Vars), len(msg))
		}
		if ev.Action == "" || !strings.HasPrefix(ev.DevPath, "/") {
			t.Fatalf("accepted without action/devpath: %+v", ev)
		}
		if bytes.Contains([]byte(ev.Action+ev.DevPath), []byte{0}) {
			t.Fatalf("NUL inside a field: %+v", ev)
		}
		again, err := Parse(ev.Bytes())
		if err != nil {
			t.Fatalf("re-parse of %q: %v", ev.Bytes(), err)
		}
		if !reflect.DeepEqual(again, ev) {
			t.Fatalf("round trip changed the event:\n%+v\n%+v", ev, again)
		}
	})
}
