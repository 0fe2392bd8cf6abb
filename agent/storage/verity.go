package storage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/keelvm/keel/agent/devmapper"
)

// dm-verity for a multi-layer EROFS partition (Kata's
// X-kata.dmverity-enabled=true, kata-types dmverity.rs): the partition
// holds the EROFS image, then at hashoffset the verity hash tree (with
// veritysetup's superblock unless no-superblock=true); the layer is
// mounted from a read-only verity device checked against roothash, so a
// block the host altered reads as an I/O error.
const optVerityPrefix = "X-kata.dmverity."

// verityParams are the X-kata.dmverity.* options of one layer.
type verityParams struct {
	rootHash, salt, algorithm string
	offset, blockSize         uint64
	hashSize                  uint64
	version                   uint64
	noSuperblock              bool
}

// parseVerity reads a layer's verity options with Kata's defaults
// (sha256, 4096-byte blocks, version 1, a superblock).
func parseVerity(opts []string) (verityParams, error) {
	v := verityParams{algorithm: "sha256", blockSize: 4096, hashSize: 4096, version: 1, salt: "-"}
	num := func(key, val string, dst *uint64) error {
		n, err := strconv.ParseUint(val, 10, 64)
		if err != nil {
			return fmt.Errorf("%s%s=%q: want a number", optVerityPrefix, key, trunc(val))
		}
		*dst = n
		return nil
	}
	isHex := func(s string) bool { _, err := hex.DecodeString(s); return err == nil && s != "" }
	for _, o := range opts {
		kv, ok := strings.CutPrefix(o, optVerityPrefix)
		if !ok {
			continue
		}
		key, val, _ := strings.Cut(kv, "=")
		var err error
		switch key {
		case "roothash":
			if !isHex(val) {
				return v, fmt.Errorf("%sroothash=%q: want hex", optVerityPrefix, trunc(val))
			}
			v.rootHash = val
		case "salt":
			if val != "" && val != "-" && !isHex(val) {
				return v, fmt.Errorf("%ssalt=%q: want hex or -", optVerityPrefix, trunc(val))
			}
			if val != "" {
				v.salt = val
			}
		case "algorithm":
			if val == "" || strings.Trim(val, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
				return v, fmt.Errorf("%salgorithm=%q: want a hash name", optVerityPrefix, trunc(val))
			}
			v.algorithm = val
		case "hashoffset":
			err = num(key, val, &v.offset)
		case "blocksize":
			err = num(key, val, &v.blockSize)
		case "hashsize":
			err = num(key, val, &v.hashSize)
		case "hashtype":
			err = num(key, val, &v.version)
		case "no-superblock":
			v.noSuperblock, err = strconv.ParseBool(val)
		}
		if err != nil {
			return v, err
		}
	}
	pow2 := func(n uint64) bool { return n >= 512 && n <= 1<<20 && n&(n-1) == 0 }
	switch {
	case v.rootHash == "":
		return v, fmt.Errorf("%sroothash is required", optVerityPrefix)
	case v.offset == 0:
		return v, fmt.Errorf("%shashoffset is required", optVerityPrefix)
	case !pow2(v.blockSize) || !pow2(v.hashSize):
		return v, fmt.Errorf("%sblocksize/hashsize: want powers of two from 512", optVerityPrefix)
	case v.offset%v.blockSize != 0 || v.offset%v.hashSize != 0:
		return v, fmt.Errorf("%shashoffset %d is not a multiple of the block sizes", optVerityPrefix, v.offset)
	case v.version > 1:
		return v, fmt.Errorf("%shashtype %d: want 0 or 1", optVerityPrefix, v.version)
	}
	return v, nil
}

// verity puts a read-only dm-verity device over partition dev for
// container owner and returns its node and how to remove it.
func (m *Manager) verity(ctx context.Context, field, owner, dev string, v verityParams) (string, func() error, error) {
	major, minor, err := deviceNumber(dev)
	if err != nil {
		return "", nil, err
	}
	blocks := v.offset / v.blockSize
	hashStart := v.offset / v.hashSize
	if !v.noSuperblock {
		hashStart += (512 + v.hashSize - 1) / v.hashSize
	}
	d := fmt.Sprintf("%d:%d", major, minor)
	params := fmt.Sprintf("%d %s %s %d %d %d %d %s %s %s", v.version, d, d, v.blockSize, v.hashSize, blocks, hashStart, v.algorithm, v.rootHash, v.salt)
	// One device per container and layer: two containers may share a
	// layer disk.
	h := sha256.Sum256([]byte(owner + " " + dev + " " + v.rootHash))
	name := "keel-verity-" + hex.EncodeToString(h[:8])
	path, remove, err := m.dmDevice(ctx, name, devmapper.Target{Length: blocks * v.blockSize / 512, Type: "verity", Params: []byte(params)}, true)
	if err != nil {
		return "", nil, fmt.Errorf("%s: dm-verity over %s: %w", field, dev, err)
	}
	m.cfg.Log.Info("dm-verity layer", "partition", dev, "device", path, "root_hash", v.rootHash)
	return path, remove, nil
}
