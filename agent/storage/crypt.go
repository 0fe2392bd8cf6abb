package storage

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"

	"github.com/keelvm/keel/agent/devmapper"
	"github.com/keelvm/keel/agent/uevent"
	"golang.org/x/sys/unix"
)

// Kata's encryption_key=ephemeral: the disk (a block emptyDir) is
// encrypted with a key made in the guest and never stored: a dm-crypt
// device (AES-256-XTS, plain64 IVs, no header: with a key nobody keeps,
// a LUKS header would protect nothing) over the disk, a fresh ext4 on it
// (create_filesystem, required), mounted; the key lives only in the
// kernel's dm-crypt state and is wiped from the agent's memory and, with
// DM_SECURE_DATA, from the kernel's ioctl buffers. What reaches the host
// is ciphertext; when the storage goes, the device is removed and the
// data is unrecoverable.
const (
	cryptCipher = "aes-xts-plain64"
	cryptKeyLen = 64 // two AES-256 keys for XTS
)

// cryptName is the device-mapper name of the encrypted disk at mount
// point mp (unique per mount point, which is unique per storage).
func cryptName(mp string) string {
	h := sha256.Sum256([]byte(mp))
	return "keel-ephemeral-" + hex.EncodeToString(h[:8])
}

// encrypt puts a dm-crypt device with a fresh random key over dev and
// returns its /dev path and how to remove it.
func (m *Manager) encrypt(ctx context.Context, field, mp, dev string) (string, func() error, error) {
	sectors, err := devmapper.SectorsOf(dev)
	if err != nil {
		return "", nil, err
	}
	if sectors == 0 {
		return "", nil, invalidf("%s.source: %s is empty", field, dev)
	}
	major, minor, err := deviceNumber(dev)
	if err != nil {
		return "", nil, err
	}
	key := make([]byte, cryptKeyLen)
	if _, err := rand.Read(key); err != nil {
		return "", nil, fmt.Errorf("unable to make the ephemeral key: %w", err)
	}
	// "<cipher> <key hex> <iv offset> <device> <offset>", built in one
	// buffer that is wiped after the load (no string copies of the key).
	params := make([]byte, 0, len(cryptCipher)+1+2*cryptKeyLen+64)
	params = append(params, cryptCipher...)
	params = append(params, ' ')
	params = hex.AppendEncode(params, key)
	clear(key)
	params = append(params, " 0 "...)
	params = strconv.AppendUint(params, uint64(major), 10)
	params = append(params, ':')
	params = strconv.AppendUint(params, uint64(minor), 10)
	params = append(params, " 0"...)
	name := cryptName(mp)
	path, remove, err := m.dmDevice(ctx, name, devmapper.Target{Start: 0, Length: sectors, Type: "crypt", Params: params}, false)
	clear(params)
	if err != nil {
		return "", nil, fmt.Errorf("%s.driver_options %q: %w", field, optEphemeralKey, err)
	}
	m.cfg.Log.Info("ephemeral dm-crypt device", "disk", dev, "name", name, "device", path)
	return path, remove, nil
}

// dmDevice creates device-mapper device name with one target and waits
// for its node; it returns the node and how to remove the device.
func (m *Manager) dmDevice(ctx context.Context, name string, t devmapper.Target, readOnly bool) (string, func() error, error) {
	d, err := devmapper.Create(name, []devmapper.Target{t}, readOnly)
	if err != nil {
		return "", nil, err
	}
	remove := func() error { return devmapper.Remove(name) }
	ev, err := m.cfg.Devices.Wait(ctx, uevent.ByName("block", "dm-"+strconv.FormatUint(uint64(d.Minor), 10)), 0)
	if err != nil {
		remove()
		return "", nil, fmt.Errorf("device-mapper device %s: %w", name, err)
	}
	return "/dev/" + ev.DevName, remove, nil
}

// deviceNumber returns the major:minor of block device dev.
func deviceNumber(dev string) (uint32, uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return 0, 0, fmt.Errorf("unable to stat %s: %w", dev, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, 0, fmt.Errorf("%s is not a block device", dev)
	}
	return unix.Major(st.Rdev), unix.Minor(st.Rdev), nil
}
