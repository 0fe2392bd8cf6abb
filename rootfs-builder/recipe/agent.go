package recipe

import (
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// CheckStaticBinary refuses anything that cannot run as PID 1 of an empty
// root filesystem: a missing file, a non-ELF file, or a dynamically linked
// ELF (one with a PT_INTERP program header or a DT_NEEDED library).
func CheckStaticBinary(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("agent binary: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("agent binary %s is not a regular file", path)
	}
	if st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("agent binary %s is not executable", path)
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("agent binary %s is not an ELF executable: %w", path, err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("agent binary %s is an ELF %v, not an executable", path, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("agent binary %s is dynamically linked (has an ELF interpreter); build it static (CGO_ENABLED=0, or -extldflags -static)", path)
		}
	}
	// A static-pie has a PT_DYNAMIC segment but no libraries; only DT_NEEDED
	// entries make a binary depend on files we would not install.
	if libs, err := f.ImportedLibraries(); err == nil && len(libs) > 0 {
		return fmt.Errorf("agent binary %s is dynamically linked (needs %s)", path, strings.Join(libs, ", "))
	}
	return nil
}

// AgentVersion runs `agent --version` and returns its first output line,
// or "" if the binary does not answer within a second. A version is
// informational only, so failure is not an error.
func AgentVersion(ctx context.Context, path string) string {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "--version")
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(line)
}
