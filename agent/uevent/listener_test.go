package uevent

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"testing"
	"time"
)

// TestListenerReceivesKernelEvent asks the kernel for a synthetic uevent
// (writing to a device's uevent file; root only) and waits for it through
// a real Listener.
func TestListenerReceivesKernelEvent(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: synthetic uevents are requested by writing to sysfs")
	}
	r := NewRegistry("", 0)
	l, err := Listen(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	b := make([]byte, 16)
	rand.Read(b)
	uuid := fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
	m := Matcher{What: "synthetic change of /dev/null", Match: func(ev *Event) bool {
		return ev.Action == ActionChange && ev.Vars["SYNTH_UUID"] == uuid
	}}
	done := make(chan error, 1)
	var got Event
	go func() {
		var err error
		got, err = r.Wait(context.Background(), m, 10*time.Second)
		done <- err
	}()
	for r.Waiting() == 0 {
		time.Sleep(time.Millisecond)
	}
	if err := os.WriteFile("/sys/devices/virtual/mem/null/uevent", []byte("change "+uuid), 0); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got.DevPath != "/devices/virtual/mem/null" || got.Subsystem != "mem" || got.DevName != "null" || got.Seqnum == 0 {
		t.Fatalf("got %+v", got)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// The real sysfs: /dev/null's device reads back as its add event.
func TestFromSysfs(t *testing.T) {
	ev, err := FromSysfs("/sys", "/devices/virtual/mem/null")
	if err != nil {
		t.Fatal(err)
	}
	if ev.Action != ActionAdd || ev.Subsystem != "mem" || ev.DevName != "null" || ev.Major != "1" || ev.Minor != "3" {
		t.Fatalf("got %+v", ev)
	}
	for _, bad := range []string{"devices/virtual/mem/null", "/devices/../devices/virtual/mem/null", "/devices/none"} {
		if _, err := FromSysfs("/sys", bad); err == nil {
			t.Errorf("FromSysfs(%q) succeeded", bad)
		}
	}
}

func TestByNameFindsPresentDevice(t *testing.T) {
	r := NewRegistry("", time.Second)
	ev, err := r.Wait(context.Background(), ByName("mem", "null"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if ev.DevPath != "/devices/virtual/mem/null" || ev.Major != "1" {
		t.Fatalf("got %+v", ev)
	}
	if _, err := r.Wait(context.Background(), ByName("mem", "../mem/null"), 100*time.Millisecond); err == nil {
		t.Fatal("a name with a slash was looked up")
	}
}
