package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/keelvm/keel/agent/devmapper"
	"github.com/keelvm/keel/agent/uevent"
)

// Kata's multi-layer EROFS rootfs (runtime-rs, containerd's EROFS
// snapshotter): the container's rootfs arrives as several storages of one
// request, each a disk (driver blk or scsi) marked with option
// X-kata.multi-layer=true (or driver erofs.multi-layer):
//
//   - EROFS lower layers (fstype erofs, or option X-kata.overlay-lower),
//     mounted read-only; on one GPT disk each is a partition
//     (X-kata.gpt-partitioned=true, X-kata.partition-number=N, ordered by
//     N: the lowest is the top layer);
//   - at most one ext4 upper (X-kata.overlay-upper), the writable layer;
//     without it the upper is a directory under the container's base;
//   - a GPT partition may be checked with dm-verity
//     (X-kata.dmverity-enabled=true and X-kata.dmverity.* options, see
//     verity.go);
//   - X-kata.mkdir.path={{ mount 0 }}/dir[:mode...] options: directories
//     made in the upper ({{ mount 0 }}) or first lower ({{ mount 1 }})
//     before the overlay is mounted.
//
// The group is mounted as one overlay on the upper's mount point (or the
// first lower's without an upper), with the layers under
// <ContainerBase>/<container>/multi-layer/{upper,lower-N}; it is one
// storage for reference counting and teardown.
const (
	DriverMultiLayerErofs = "erofs.multi-layer"

	optMultiLayer   = "X-kata.multi-layer=true"
	optOverlayUpper = "X-kata.overlay-upper"
	optOverlayLower = "X-kata.overlay-lower"
	optGPT          = "X-kata.gpt-partitioned=true"
	optPartition    = "X-kata.partition-number="
	optMkdir        = "X-kata.mkdir.path="
	optDmVerity     = "X-kata.dmverity-enabled=true"
	kataOptPrefix   = "X-kata."

	// maxLayers bounds a group: each layer is a disk wait and a mount.
	maxLayers = 128
)

// isMultiLayer reports whether s belongs to a multi-layer EROFS group.
func isMultiLayer(s Storage) bool {
	return s.Driver == DriverMultiLayerErofs || hasOption(s.Options, optMultiLayer)
}

// layer is one storage of a group, with its index in the request.
type layer struct {
	index int
	Storage
}

// groupMultiLayer returns the storage standing for every multi-layer
// storage of ss (ok false if there is none); Kata treats all of them in
// one request as one group.
func groupMultiLayer(ss []Storage) (group Storage, first int, ok bool) {
	first = -1
	for i, s := range ss {
		if !isMultiLayer(s) {
			continue
		}
		if first < 0 {
			first = i
		}
		group.layers = append(group.layers, layer{i, s})
	}
	if first < 0 {
		return Storage{}, -1, false
	}
	group.Driver = DriverMultiLayerErofs
	group.Source = "overlay"
	group.Shared = ss[first].Shared
	// The overlay goes on the upper's mount point, else the first lower's;
	// the classification is checked again (with errors) at setup.
	group.MountPoint = ss[first].MountPoint
	for _, l := range group.layers {
		if isUpper(l.Storage) {
			group.MountPoint = l.MountPoint
			break
		}
	}
	if !hasUpper(group.layers) {
		for _, l := range group.layers {
			if isLower(l.Storage) {
				group.MountPoint = l.MountPoint
				break
			}
		}
	}
	return group, first, true
}

func isUpper(s Storage) bool {
	return s.Fstype == "ext4" && (hasOption(s.Options, optOverlayUpper) || hasOption(s.Options, optMultiLayer)) && !hasOption(s.Options, optOverlayLower)
}

func isLower(s Storage) bool {
	return hasOption(s.Options, optOverlayLower) || (s.Fstype == "erofs" && hasOption(s.Options, optMultiLayer))
}

func hasUpper(ls []layer) bool {
	for _, l := range ls {
		if isUpper(l.Storage) {
			return true
		}
	}
	return false
}

// validateLayers checks every storage of the group (before anything is
// set up) and returns the upper (nil: none) and the lowers in overlay
// order.
func (m *Manager) validateLayers(field string, g Storage) (*layer, []layer, error) {
	if len(g.layers) > maxLayers {
		return nil, nil, invalidf("%s: %d multi-layer storages, at most %d", field, len(g.layers), maxLayers)
	}
	var upper *layer
	var lowers []layer
	gpt := false
	for _, l := range g.layers {
		f := fmt.Sprintf("%s[%d]", field, l.index)
		if l.Driver != DriverBlk && l.Driver != DriverSCSI {
			return nil, nil, invalidf("%s.driver %q: a multi-layer EROFS layer is a disk, driver blk or scsi, marked with option %s", f, trunc(l.Driver), optMultiLayer)
		}
		if _, err := checkMountPoint(f+".mount_point", l.MountPoint, m.cfg.Roots); err != nil {
			return nil, nil, err
		}
		if _, _, err := parseOptions(f+".options", l.Options); err != nil {
			return nil, nil, err
		}
		if hasOption(l.Options, optDmVerity) {
			if !hasOption(l.Options, optGPT) {
				return nil, nil, invalidf("%s.options %s: dm-verity is for GPT partitions (%s), as in Kata", f, optDmVerity, optGPT)
			}
			if _, err := parseVerity(l.Options); err != nil {
				return nil, nil, invalidf("%s.options: %v", f, err)
			}
			if why := devmapper.Available(); why != "" {
				return nil, nil, fmt.Errorf("%w: %s.options %s: dm-verity needs device-mapper: %s", ErrUnsupported, f, optDmVerity, why)
			}
		}
		for i, o := range l.Options {
			if p, ok := strings.CutPrefix(o, optMkdir); ok {
				if _, _, err := parseMkdir(p); err != nil {
					return nil, nil, invalidf("%s.options[%d] %q: %v", f, i, trunc(o), err)
				}
			}
		}
		switch {
		case hasOption(l.Options, optOverlayUpper) && l.Fstype != "ext4":
			return nil, nil, invalidf("%s.fstype %q: a multi-layer EROFS upper is ext4 (omit it for a directory upper)", f, trunc(l.Fstype))
		case isUpper(l.Storage):
			if upper != nil {
				return nil, nil, invalidf("%s: a second upper layer (the first is %s[%d]); at most one", f, field, upper.index)
			}
			upper = &l
		case isLower(l.Storage):
			if l.Fstype != "erofs" {
				return nil, nil, invalidf("%s.fstype %q: a multi-layer lower is erofs", f, trunc(l.Fstype))
			}
			if hasOption(l.Options, optGPT) {
				gpt = true
				if _, err := partitionNumber(l.Options); err != nil {
					return nil, nil, invalidf("%s.options: %v", f, err)
				}
			}
			lowers = append(lowers, l)
		default:
			return nil, nil, invalidf("%s: neither an erofs lower (%s) nor an ext4 upper (%s)", f, optOverlayLower, optOverlayUpper)
		}
	}
	if len(lowers) == 0 {
		return nil, nil, invalidf("%s: a multi-layer EROFS rootfs without an erofs lower layer", field)
	}
	if gpt {
		for _, l := range lowers {
			if !hasOption(l.Options, optGPT) {
				return nil, nil, invalidf("%s[%d].options: %s missing while other layers are GPT partitions", field, l.index, optGPT)
			}
		}
		sort.SliceStable(lowers, func(i, j int) bool {
			a, _ := partitionNumber(lowers[i].Options)
			b, _ := partitionNumber(lowers[j].Options)
			return a < b
		})
	}
	return upper, lowers, nil
}

func partitionNumber(opts []string) (int, error) {
	v, ok := optionValue(opts, strings.TrimSuffix(optPartition, "="))
	if !ok {
		return 0, fmt.Errorf("%s needs %sN", optGPT, optPartition)
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 128 {
		return 0, fmt.Errorf("%s%q: want a partition number 1-128", optPartition, trunc(v))
	}
	return n, nil
}

// parseMkdir splits "{{ mount N }}/rel[:mode...]" into N (0: upper,
// 1: first lower) and the clean relative path. The mode, uid and gid
// after the colon are ignored, as Kata does.
func parseMkdir(spec string) (int, string, error) {
	p, _, _ := strings.Cut(spec, ":")
	var n int
	switch {
	case strings.HasPrefix(p, "{{ mount 0 }}"):
		n, p = 0, strings.TrimPrefix(p, "{{ mount 0 }}")
	case strings.HasPrefix(p, "{{ mount 1 }}"):
		n, p = 1, strings.TrimPrefix(p, "{{ mount 1 }}")
	default:
		return 0, "", errors.New("want {{ mount 0 }}/<dir> or {{ mount 1 }}/<dir>")
	}
	rel := strings.TrimPrefix(p, "/")
	if rel == "" || filepath.Clean(rel) != rel || rel == ".." || strings.HasPrefix(rel, "../") || strings.ContainsRune(rel, 0) {
		return 0, "", errors.New("want a clean path below the mount")
	}
	return n, rel, nil
}

// mkdirs makes the X-kata.mkdir.path directories that refer to mount n
// (at dir), without following any symlink (the layers come from the host).
func mkdirs(layers []layer, n int, dir string) error {
	for _, l := range layers {
		for _, o := range l.Options {
			spec, ok := strings.CutPrefix(o, optMkdir)
			if !ok {
				continue
			}
			k, rel, _ := parseMkdir(spec)
			if k != n {
				continue
			}
			_, f, err := makeTarget(dir, filepath.Join(dir, rel), true)
			if err != nil {
				return fmt.Errorf("%s: %w", o, err)
			}
			f.Close()
		}
	}
	return nil
}

// setUpMultiLayer mounts the layers of the group g and the overlay over
// them.
func (m *Manager) setUpMultiLayer(ctx context.Context, owner, field string, g Storage) (_ func() error, err error) {
	upper, lowers, err := m.validateLayers(field, g)
	if err != nil {
		return nil, err
	}
	name := owner
	if name == "" {
		name = "sandbox"
	}
	if strings.ContainsAny(name, "/:,\x00") || name == "." || name == ".." {
		return nil, invalidf("container id %q: not usable in a path", trunc(name))
	}
	base := filepath.Join(m.cfg.ContainerBase, name, "multi-layer")
	root, err := checkMountPoint(field+" (layer directory)", base, m.cfg.Roots)
	if err != nil {
		return nil, err
	}

	// Teardown, built as the setup goes: last set up, first undone.
	var undos []func() error
	undoAll := func() error {
		var errs []error
		for i := len(undos) - 1; i >= 0; i-- {
			if e := undos[i](); e != nil {
				errs = append(errs, e)
			}
		}
		return errors.Join(errs...)
	}
	defer func() {
		if err != nil {
			if e := undoAll(); e != nil {
				m.cfg.Log.Warn("multi-layer rollback", "err", e)
			}
		}
	}()
	t, f, err := makeTarget(root, base, true)
	if err != nil {
		return nil, err
	}
	f.Close()
	undos = append(undos, func() error { t.removeCreated(); return nil })

	// The upper: an ext4 disk, or a directory removed with the group.
	upperDir := filepath.Join(base, "upper")
	if upper != nil {
		f := fmt.Sprintf("%s[%d]", field, upper.index)
		dev, err := m.findDisk(ctx, f, upper.Storage)
		if err != nil {
			return nil, err
		}
		opts := withoutKataOptions(upper.Options)
		u, err := m.mount(f, Storage{MountPoint: upperDir}, dev, "ext4", opts, true)
		if err != nil {
			return nil, err
		}
		undos = append(undos, u)
	} else {
		ut, f, err := makeTarget(root, upperDir, true)
		if err != nil {
			return nil, err
		}
		f.Close()
		undos = append(undos, func() error {
			// Only what this group created: the container's writes.
			if len(ut.created) > 0 {
				return os.RemoveAll(upperDir)
			}
			return nil
		})
	}
	if err := mkdirs(g.layers, 0, upperDir); err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}

	// The lowers, read-only, in overlay order.
	lowerDirs := make([]string, len(lowers))
	gptBase := map[string]string{} // source -> disk, each disk waited for once
	for i, l := range lowers {
		f := fmt.Sprintf("%s[%d]", field, l.index)
		var dev string
		if hasOption(l.Options, optGPT) {
			disk, ok := gptBase[l.Source]
			if !ok {
				if disk, err = m.findDisk(ctx, f, l.Storage); err != nil {
					return nil, err
				}
				gptBase[l.Source] = disk
			}
			n, _ := partitionNumber(l.Options)
			if dev, err = m.findPartition(ctx, f, disk, n); err != nil {
				return nil, err
			}
			if hasOption(l.Options, optDmVerity) {
				v, _ := parseVerity(l.Options)
				vdev, remove, err := m.verity(ctx, f, name, dev, v)
				if err != nil {
					return nil, err
				}
				undos = append(undos, remove)
				dev = vdev
			}
		} else if dev, err = m.findDisk(ctx, f, l.Storage); err != nil {
			return nil, err
		}
		lowerDirs[i] = filepath.Join(base, fmt.Sprintf("lower-%d", i))
		u, err := m.mount(f, Storage{MountPoint: lowerDirs[i]}, dev, "erofs", []string{"ro"}, true)
		if err != nil {
			return nil, err
		}
		undos = append(undos, u)
	}
	if err := mkdirs(g.layers, 1, lowerDirs[0]); err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}

	// upperdir and workdir inside the upper, refusing a symlink the
	// upper disk may carry.
	var ovl []string
	for _, d := range []string{"upper", "work"} {
		_, f, err := makeTarget(upperDir, filepath.Join(upperDir, d), true)
		if err != nil {
			return nil, fmt.Errorf("%s: the upper layer's %s directory: %w", field, d, err)
		}
		f.Close()
		ovl = append(ovl, d+"dir="+filepath.Join(upperDir, d))
	}
	ovl = append(ovl, "lowerdir="+strings.Join(lowerDirs, ":"))
	u, err := m.mount(field, g, "overlay", "overlay", ovl, true)
	if err != nil {
		return nil, err
	}
	undos = append(undos, u)
	m.cfg.Log.Info("multi-layer EROFS rootfs mounted", "mount_point", g.MountPoint, "lowers", len(lowers), "ext4_upper", upper != nil)
	return undoAll, nil
}

// findPartition waits for partition n of disk (/dev/vdb -> vdb2,
// /dev/loop0 -> loop0p2), which the kernel adds after reading the GPT.
func (m *Manager) findPartition(ctx context.Context, field, disk string, n int) (string, error) {
	name := strings.TrimPrefix(disk, "/dev/")
	if last := name[len(name)-1]; last >= '0' && last <= '9' {
		name += "p"
	}
	name += strconv.Itoa(n)
	ev, err := m.cfg.Devices.Wait(ctx, uevent.ByName("block", name), 0)
	if err != nil {
		return "", fmt.Errorf("%s: partition %d of %s: %w", field, n, disk, err)
	}
	if ev.DevName == "" {
		return "", fmt.Errorf("%s: partition %d of %s has no device node", field, n, disk)
	}
	return "/dev/" + ev.DevName, nil
}

func withoutKataOptions(opts []string) []string {
	out := make([]string, 0, len(opts))
	for _, o := range opts {
		if !strings.HasPrefix(o, kataOptPrefix) {
			out = append(out, o)
		}
	}
	return out
}
