package kmod

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keelvm/keel/tests/vmm/guestkernel"

	"golang.org/x/sys/unix"
)

const sampleDep = `kernel/drivers/nvdimm/nd_pmem.ko: kernel/drivers/dax/dax.ko kernel/drivers/nvdimm/libnvdimm.ko
kernel/drivers/nvdimm/libnvdimm.ko:
kernel/drivers/dax/dax.ko:
kernel/drivers/virtio/virtio_pmem.ko.xz: kernel/drivers/nvdimm/libnvdimm.ko
kernel/fs/erofs/erofs.ko.zst: kernel/lib/crc32c-generic.ko
kernel/lib/crc32c-generic.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vsock.ko:
`

func sampleIndex(t *testing.T) *Index {
	d, err := ParseDep(sampleDep)
	if err != nil {
		t.Fatal(err)
	}
	return &Index{Dir: "/m", Deps: d,
		Aliases: ParseAlias("# c\nalias fs-erofs erofs\nalias virtio:d00000001v* virtio-net\nalias net-pf-40 vsock\n"),
		Builtin: ParseBuiltin("kernel/net/core/virtio_net.ko\n")}
}

func TestParseDep(t *testing.T) {
	ix := sampleIndex(t)
	if got := ix.Deps["nd_pmem"]; got.Path != "kernel/drivers/nvdimm/nd_pmem.ko" || !reflect.DeepEqual(got.Deps, []string{"dax", "libnvdimm"}) {
		t.Errorf("nd_pmem = %+v", got)
	}
	if _, ok := ix.Deps["crc32c_generic"]; !ok {
		t.Errorf("'-' not normalised: %v", ix.Deps)
	}
	d, err := ParseDep("good.ko:\nno colon here\n:\n")
	if err == nil || !strings.Contains(err.Error(), "line 2") || !strings.Contains(err.Error(), "line 3") || len(d) != 1 {
		t.Errorf("malformed: %v %v", d, err)
	}
}

func TestResolve(t *testing.T) {
	ix := sampleIndex(t)
	for _, tc := range []struct {
		name string
		want []string
		err  error
	}{
		{"nd_pmem", []string{"dax", "libnvdimm", "nd_pmem"}, nil},
		{"nd-pmem", []string{"dax", "libnvdimm", "nd_pmem"}, nil},
		{"vmw_vsock_virtio_transport", []string{"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"}, nil},
		{"fs-erofs", []string{"crc32c_generic", "erofs"}, nil},
		{"net-pf-40", []string{"vsock"}, nil},
		{"virtio_net", nil, nil},
		{"virtio:d00000001v00001AF4", nil, nil},
		{"nope", nil, ErrNotFound},
	} {
		got, err := ix.Resolve(tc.name)
		if !errors.Is(err, tc.err) || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Resolve(%s) = %v, %v; want %v, %v", tc.name, got, err, tc.want, tc.err)
		}
	}
	cyc, _ := ParseDep("a.ko: b.ko\nb.ko: a.ko\nc.ko: missing.ko\n")
	ix = &Index{Deps: cyc}
	if _, err := ix.Resolve("a"); !errors.Is(err, ErrDepCycle) {
		t.Errorf("cycle: %v", err)
	}
	if _, err := ix.Resolve("c"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "needed by c") {
		t.Errorf("missing dep: %v", err)
	}
}

type call struct {
	file   string
	params string
	flags  int
}

func fakeLoader(t *testing.T, loaded map[string]bool, fail map[string]error) (*Loader, *[]call) {
	dir := t.TempDir()
	ix := sampleIndex(t)
	ix.Dir = dir
	for _, d := range ix.Deps {
		p := filepath.Join(dir, d.Path)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("ELF"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var calls []call
	l := &Loader{Index: ix, Loaded: func(n string) bool { return loaded[n] }}
	l.Log = nil
	l.Finit = func(fd int, params string, flags int) error {
		target, _ := os.Readlink(filepath.Join("/proc/self/fd", strconv.Itoa(fd)))
		calls = append(calls, call{strings.TrimPrefix(target, dir+"/"), params, flags})
		return fail[NameFromPath(target)]
	}
	return l, &calls
}

func TestLoad(t *testing.T) {
	l, calls := fakeLoader(t, map[string]bool{"dax": true}, map[string]error{"libnvdimm": unix.EEXIST})
	l.Log = discard()
	if err := l.Load([]ModuleSpec{{Name: "nd_pmem", Params: "x=1"}, {Name: "virtio_pmem"}}); err != nil {
		t.Fatal(err)
	}
	want := []call{
		{"kernel/drivers/nvdimm/libnvdimm.ko", "", 0},
		{"kernel/drivers/nvdimm/nd_pmem.ko", "x=1", 0},
		{"kernel/drivers/nvdimm/libnvdimm.ko", "", 0},
		{"kernel/drivers/virtio/virtio_pmem.ko.xz", "", unix.MODULE_INIT_COMPRESSED_FILE},
	}
	if !reflect.DeepEqual(*calls, want) {
		t.Errorf("calls\n%v\nwant\n%v", *calls, want)
	}
}

func TestLoadErrors(t *testing.T) {
	l, _ := fakeLoader(t, nil, map[string]error{"erofs": unix.EOPNOTSUPP, "vsock": unix.ENOEXEC})
	l.Log = discard()
	if err := l.Load([]ModuleSpec{{Name: "erofs"}}); !errors.Is(err, ErrCompression) {
		t.Errorf("compressed: %v", err)
	}
	err := l.Load([]ModuleSpec{{Name: "vmw_vsock_virtio_transport"}})
	if !errors.Is(err, unix.ENOEXEC) || !strings.Contains(err.Error(), "vsock") {
		t.Errorf("finit failure: %v", err)
	}
	if err := l.Load([]ModuleSpec{{Name: "absent"}}); !errors.Is(err, ErrNotFound) {
		t.Errorf("absent: %v", err)
	}
}

// TestRealKernelIndex resolves every module of a real kernel's index: the
// running kernel's when it has one, else Debian's guest kernel (the one the
// VM tests boot; fetched into the cache once), so the test never skips.
func TestRealKernelIndex(t *testing.T) {
	dir, err := ModulesDir()
	if err != nil {
		t.Fatal(err)
	}
	ix, err := OpenIndex(dir)
	if err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		k, kerr := guestkernel.Ensure(ctx)
		if kerr != nil {
			t.Fatalf("no module index for the running kernel (%v) and no Debian kernel: %v", err, kerr)
		}
		if ix, err = OpenIndex(k.ModulesDir); err != nil {
			t.Fatal(err)
		}
	}
	if len(ix.Deps) < 100 {
		t.Fatalf("index of %s lists %d modules, want a real kernel's", ix.Dir, len(ix.Deps))
	}
	for n := range ix.Deps {
		if _, err := ix.Resolve(n); err != nil {
			t.Errorf("Resolve(%s): %v", n, err)
		}
	}
}

func FuzzParseDep(f *testing.F) {
	f.Add(sampleDep)
	f.Add("a.ko: b.ko\nb.ko: a.ko")
	f.Add(":::\n.ko:.ko .ko")
	f.Fuzz(func(t *testing.T, s string) {
		d, _ := ParseDep(s)
		ix := &Index{Deps: d, Aliases: ParseAlias(s), Builtin: ParseBuiltin(s)}
		for n := range d {
			order, err := ix.Resolve(n)
			if err == nil && (len(order) == 0 || order[len(order)-1] != n) && !ix.Builtin[n] {
				t.Fatalf("Resolve(%q) = %v", n, order)
			}
		}
	})
}
