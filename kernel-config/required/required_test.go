package required

import (
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func allY() map[string]string {
	cfg := map[string]string{}
	for _, f := range Features() {
		for _, o := range f.Options {
			cfg[o] = "y"
		}
	}
	return cfg
}

func TestFeaturesWellFormed(t *testing.T) {
	seen := map[string]string{}
	for _, f := range Features() {
		if f.Name == "" || f.Why == "" || len(f.Options) == 0 {
			t.Errorf("incomplete feature %+v", f)
		}
		for _, o := range f.Options {
			if strings.HasPrefix(o, "CONFIG_") {
				t.Errorf("%s: option %s has the CONFIG_ prefix", f.Name, o)
			}
			if prev, ok := seen[o]; ok {
				t.Errorf("%s listed by %s and %s", o, prev, f.Name)
			}
			seen[o] = f.Name
		}
	}
	// Features returns a copy.
	Features()[0].Options[0] = "CHANGED"
	if Features()[0].Options[0] == "CHANGED" {
		t.Error("Features shares its slices")
	}
}

func TestCheck(t *testing.T) {
	cfg := allY()
	if m := Check(cfg); len(m) != 0 {
		t.Fatalf("all =y: missing %v", m)
	}
	delete(cfg, "VIRTIO_VSOCKETS")
	cfg["FS_DAX"] = "m"
	cfg["EROFS_FS"] = ""
	got := Check(cfg)
	var s []string
	for _, m := range got {
		s = append(s, m.String())
	}
	want := []string{
		"agent-transport: CONFIG_VIRTIO_VSOCKETS is not set",
		"dax-root: CONFIG_FS_DAX =m (must be =y)",
		"root-filesystems: CONFIG_EROFS_FS is not set",
	}
	if strings.Join(s, "\n") != strings.Join(want, "\n") {
		t.Errorf("Check = %q, want %q", s, want)
	}
	// CONFIG_-prefixed keys, as in a raw .config, work too.
	pref := map[string]string{}
	for k, v := range allY() {
		pref["CONFIG_"+k] = v
	}
	if m := Check(pref); len(m) != 0 {
		t.Errorf("prefixed keys: missing %v", m)
	}
	if m := Check(nil); len(m) == 0 {
		t.Error("empty config reported complete")
	}
}

func TestCheckFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := CheckGzip(filepath.Join(dir, "config.gz"), nil); !errors.Is(err, ErrNotAvailable) {
		t.Errorf("missing file: err = %v, want ErrNotAvailable", err)
	}
	plain := filepath.Join(dir, "plain")
	os.WriteFile(plain, []byte("CONFIG_A=y\n"), 0o644)
	if _, err := CheckGzip(plain, nil); err == nil || !strings.Contains(err.Error(), plain) {
		t.Errorf("not gzip: err = %v", err)
	}
	gz := filepath.Join(dir, "config.gz")
	f, _ := os.Create(gz)
	zw := gzip.NewWriter(f)
	zw.Write([]byte("# comment\n# CONFIG_VIRTIO_VSOCKETS is not set\n"))
	for k := range allY() {
		if k != "VIRTIO_VSOCKETS" {
			zw.Write([]byte("CONFIG_" + k + "=y\n"))
		}
	}
	zw.Close()
	f.Close()
	m, err := CheckGzip(gz, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 1 || m[0].Option != "VIRTIO_VSOCKETS" || m[0].Got != "n" {
		t.Errorf("missing = %v", m)
	}
}

func TestCheckRunning(t *testing.T) {
	m, err := CheckRunning()
	if errors.Is(err, ErrNotAvailable) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("running kernel lacks %d required options (expected on a host kernel)", len(m))
}

// TestReadWantedMatchesReadConfig: the guest's cheaper scan gives Check the
// same answer as the full parse, on Keel's own config and on one with every
// kind of line (unset, module, string, duplicate, no value).
func TestReadWantedMatchesReadConfig(t *testing.T) {
	var sb strings.Builder
	sb.WriteString("#\n# comment\n# CONFIG_VIRTIO_VSOCKETS is not set\nCONFIG_FUSE_FS=m\nCONFIG_LOCALVERSION=\"x\"\n  CONFIG_TTY=y  \nCONFIG_EROFS_FS=\nCONFIG_NET\nnot a line\n")
	for k := range allY() {
		if k != "VIRTIO_VSOCKETS" && k != "FUSE_FS" && k != "EROFS_FS" && k != "NET" {
			sb.WriteString("CONFIG_" + k + "=y\n")
		}
	}
	sb.WriteString("CONFIG_SECCOMP=n\n") // a later line wins in both
	inputs := map[string]string{"crafted": sb.String()}
	if b, err := os.ReadFile(builtConfig); err == nil {
		inputs["keel.config"] = string(b)
	}
	for name, in := range inputs {
		full, err := ReadConfig(strings.NewReader(in))
		if err != nil {
			t.Fatal(err)
		}
		some, err := readWanted(strings.NewReader(in))
		if err != nil {
			t.Fatal(err)
		}
		if want, got := Check(full), Check(some); !reflect.DeepEqual(want, got) {
			t.Errorf("%s: Check after readWanted = %v, after ReadConfig %v", name, got, want)
		}
		if len(some) > len(wanted) {
			t.Errorf("%s: readWanted kept %d options, more than the %d Check looks at", name, len(some), len(wanted))
		}
	}
	if got := Check(mustReadWanted(t, sb.String())); len(got) != 5 {
		t.Errorf("crafted config: missing = %v, want VIRTIO_VSOCKETS, NET, EROFS_FS, FUSE_FS (m) and SECCOMP", got)
	}
}

func mustReadWanted(t *testing.T, s string) map[string]string {
	t.Helper()
	m, err := readWanted(strings.NewReader(s))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// BenchmarkCheckFile is the guest's check of /proc/config.gz on Keel's
// kernel configuration (gunzip + scan + Check).
func BenchmarkCheckFile(b *testing.B) {
	cfg, err := os.ReadFile(builtConfig)
	if err != nil {
		b.Skipf("no built kernel configuration to check: %v", err)
	}
	gz := filepath.Join(b.TempDir(), "config.gz")
	f, err := os.Create(gz)
	if err != nil {
		b.Fatal(err)
	}
	zw := gzip.NewWriter(f)
	zw.Write(cfg)
	zw.Close()
	f.Close()
	b.Run("full", func(b *testing.B) {
		for b.Loop() {
			fh, _ := os.Open(gz)
			zr, _ := gzip.NewReader(fh)
			m, err := ReadConfig(zr)
			fh.Close()
			if err != nil {
				b.Fatal(err)
			}
			Check(m)
		}
	})
	b.Run("wanted", func(b *testing.B) {
		for b.Loop() {
			if _, err := CheckGzip(gz, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// builtConfig is the configuration of Keel's kernel where `make kernel`
// builds it, used when present.
const builtConfig = "/var/cache/keel/kernel/obj-x86_64/.config"
