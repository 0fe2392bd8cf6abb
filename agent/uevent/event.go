// Package uevent finds devices the host hot-plugs into the guest.
//
// The kernel announces every device it adds, binds or removes with a
// message on the NETLINK_KOBJECT_UEVENT socket ("uevent"). One Listener,
// started at boot by cmd/keel-agent, reads them and feeds a Registry. An
// RPC that needs a device (a block device at a PCI path, a pmem namespace,
// a NIC) calls Registry.Wait with a Matcher describing it.
//
// Wait never misses a device, whenever it arrived: it first registers
// itself for events, then looks in sysfs for a device that is already
// there (the host usually hot-plugs before it sends the RPC, so the uevent
// may be long gone), and only then waits for the uevent, up to a deadline
// (agent.hotplug_timeout by default). While it waits it looks in sysfs
// again now and then, so an event the kernel dropped (socket buffer full
// under load: ENOBUFS) costs latency, not a timeout.
//
// No history of events is kept: memory grows with the number of waiting
// calls (bounded by MaxWaiters), not with the number of events.
package uevent

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Limits of one message. The kernel builds uevents in a 2 KiB buffer with
// at most 64 variables (UEVENT_BUFFER_SIZE, UEVENT_NUM_ENVP); anything
// beyond these is not a kernel message.
const (
	MaxMessage = 8192
	MaxVars    = 64
)

// Actions the kernel sends (kobject_actions in lib/kobject_uevent.c).
const (
	ActionAdd    = "add"
	ActionRemove = "remove"
	ActionChange = "change"
	ActionBind   = "bind"
	ActionUnbind = "unbind"
	ActionOnline = "online"
)

// Event is one uevent. The well-known variables have fields; every
// variable, those included, is also in Vars.
type Event struct {
	Action    string // ACTION: add, remove, change, bind, unbind, online, offline, move
	DevPath   string // DEVPATH, relative to sysfs: "/devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio3/block/vda"
	Subsystem string // SUBSYSTEM: block, net, pci, memory, cpu, ...
	DevName   string // DEVNAME, relative to /dev: "vda", "pmem0", "vfio/12" (empty for devices without a node)
	DevType   string // DEVTYPE: "disk", "partition", ...
	Driver    string // DRIVER
	Interface string // INTERFACE: a network interface's name
	Major     string // MAJOR
	Minor     string // MINOR
	Seqnum    uint64 // SEQNUM (0 for an event read back from sysfs)
	Vars      map[string]string
}

// String describes the event for logs.
func (e *Event) String() string {
	return fmt.Sprintf("%s %s (subsystem %q, devname %q)", e.Action, e.DevPath, e.Subsystem, e.DevName)
}

// errBadMessage classifies every parse failure.
var errBadMessage = errors.New("malformed uevent")

// Parse reads a kernel uevent message: "ACTION@DEVPATH\0KEY=VALUE\0...".
// Messages from udev ("libudev" header, another multicast group) and
// messages whose header disagrees with their ACTION/DEVPATH variables are
// refused.
func Parse(msg []byte) (Event, error) {
	if len(msg) > MaxMessage {
		return Event{}, fmt.Errorf("%w: %d bytes, more than %d", errBadMessage, len(msg), MaxMessage)
	}
	parts := bytes.Split(bytes.TrimRight(msg, "\x00"), []byte{0})
	header := string(parts[0])
	action, devpath, ok := strings.Cut(header, "@")
	if !ok || action == "" || !strings.HasPrefix(devpath, "/") {
		return Event{}, fmt.Errorf("%w: header %q is not ACTION@DEVPATH", errBadMessage, truncate(header))
	}
	if len(parts)-1 > MaxVars {
		return Event{}, fmt.Errorf("%w: %d variables, more than %d", errBadMessage, len(parts)-1, MaxVars)
	}
	ev, err := fromVars(parts[1:])
	if err != nil {
		return Event{}, err
	}
	if ev.Action != action || ev.DevPath != devpath {
		return Event{}, fmt.Errorf("%w: header %q disagrees with ACTION=%q DEVPATH=%q", errBadMessage, truncate(header), truncate(ev.Action), truncate(ev.DevPath))
	}
	return ev, nil
}

// fromVars fills an Event from KEY=VALUE items.
func fromVars(items [][]byte) (Event, error) {
	ev := Event{Vars: make(map[string]string, len(items))}
	for _, it := range items {
		k, v, ok := strings.Cut(string(it), "=")
		if !ok || k == "" {
			return Event{}, fmt.Errorf("%w: variable %q is not KEY=VALUE", errBadMessage, truncate(string(it)))
		}
		ev.Vars[k] = v
		switch k {
		case "ACTION":
			ev.Action = v
		case "DEVPATH":
			ev.DevPath = v
		case "SUBSYSTEM":
			ev.Subsystem = v
		case "DEVNAME":
			ev.DevName = v
		case "DEVTYPE":
			ev.DevType = v
		case "DRIVER":
			ev.Driver = v
		case "INTERFACE":
			ev.Interface = v
		case "MAJOR":
			ev.Major = v
		case "MINOR":
			ev.Minor = v
		case "SEQNUM":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return Event{}, fmt.Errorf("%w: SEQNUM %q", errBadMessage, truncate(v))
			}
			ev.Seqnum = n
		}
	}
	return ev, nil
}

// Bytes formats e as the kernel would: the header then Vars, sorted (the
// fields are taken from Vars; tests build events this way).
func (e *Event) Bytes() []byte {
	var b bytes.Buffer
	b.WriteString(e.Vars["ACTION"] + "@" + e.Vars["DEVPATH"])
	keys := make([]string, 0, len(e.Vars))
	for k := range e.Vars {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		b.WriteByte(0)
		b.WriteString(k + "=" + e.Vars[k])
	}
	b.WriteByte(0)
	return b.Bytes()
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
