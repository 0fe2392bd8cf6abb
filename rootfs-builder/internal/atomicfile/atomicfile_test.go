package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCommitAndAbort(t *testing.T) {
	dir := t.TempDir()
	final := filepath.Join(dir, "a")
	f, err := Create(final, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("half")
	if _, err := os.Stat(final); !os.IsNotExist(err) {
		t.Fatal("final name visible before Commit")
	}
	f.Abort()
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("Abort left %v", ents)
	}
	if err := WriteFile(final, []byte("done"), 0o640); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(final)
	if err != nil || st.Mode().Perm() != 0o640 {
		t.Fatalf("%v %v", st, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("leftovers %v", ents)
	}
	if _, err := Create(filepath.Join(dir, "missing/x"), 0o644); err == nil {
		t.Fatal("Create in a missing directory succeeded")
	}
}
