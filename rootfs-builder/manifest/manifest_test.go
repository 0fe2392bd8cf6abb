package manifest

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	art := filepath.Join(t.TempDir(), "root.img")
	os.WriteFile(art, []byte("image"), 0o644)
	sum, size, err := FileDigest(art)
	if err != nil || size != 5 || sum != "6105d6cc76af400325e94d588ce511be5bfdbb73b437dc51eca43917d7a43e3d" {
		t.Fatalf("digest %s %d %v", sum, size, err)
	}
	m := &Manifest{Tool: "keel-rootfs", Artifact: "root.img", Kind: "image", Recipe: "minimal", SHA256: sum, Size: size,
		FS: &FS{Type: "ext4", UUID: "u", Size: 1, Offset: 2}, DAX: &DAX{DataOffset: 2 << 20, Mode: "ram"},
		Inputs: []Input{{Role: "agent", Path: "/a", SHA256: "x"}}}
	if err := Write(art, m); err != nil {
		t.Fatal(err)
	}
	got, err := Read(art)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Fatalf("got %+v want %+v", got, m)
	}
	os.WriteFile(Path(art), []byte("{"), 0o644)
	if _, err := Read(art); err == nil {
		t.Fatal("corrupt manifest accepted")
	}
}
