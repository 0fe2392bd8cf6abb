package storage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/keelvm/keel/agent/uevent"
	"golang.org/x/sys/unix"
)

// tagPoll bounds how long a mount of a not-yet-known virtio-fs tag waits
// for a device event before trying again.
const tagPoll = 200 * time.Millisecond

// virtiofsBound matches a virtio device bound to the virtiofs driver: the
// driver registers the device's tag in its probe, so after the bind a
// mount of that tag can succeed.
func virtiofsBound() uevent.Matcher {
	return uevent.Matcher{
		What: "a virtio-fs device",
		Match: func(ev *uevent.Event) bool {
			return ev.Subsystem == "virtio" && ev.Driver == "virtiofs" && (ev.Action == uevent.ActionBind || ev.Action == uevent.ActionAdd)
		},
	}
}

// tagWaiter returns the retry decision for mounting a virtio-fs tag that
// may have been hot-added just before the RPC: the kernel refuses an
// unknown tag with EINVAL, and nothing in sysfs of this kernel names the
// tags (/sys/fs/virtiofs/*/tag came with Linux 6.9), so the mount is
// tried again after each virtio-fs bind event, or every tagPoll, until
// the hotplug timeout. A mount refused for a wrong option is therefore
// reported only after the timeout, with both causes named.
func (m *Manager) tagWaiter(ctx context.Context, tag string) func(error) error {
	timeout := m.cfg.Devices.Timeout()
	deadline := time.Now().Add(timeout)
	tries := 0
	return func(err error) error {
		if !errors.Is(err, unix.EINVAL) {
			return err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("virtio-fs tag %q: not found within %s, or an option is wrong (%w): %w", tag, timeout, err, context.DeadlineExceeded)
		}
		tries++
		if tries == 1 {
			m.cfg.Log.Info("virtio-fs tag not known yet, waiting for its device", "tag", tag)
		}
		_, werr := m.cfg.Devices.Wait(ctx, virtiofsBound(), min(left, tagPoll))
		if werr != nil && ctx.Err() != nil {
			return fmt.Errorf("waiting for virtio-fs tag %q: %w", tag, ctx.Err())
		}
		return nil
	}
}
