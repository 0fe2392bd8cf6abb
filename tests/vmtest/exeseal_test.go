package vmtest

import (
	"context"
	"strings"
	"testing"

	pb "github.com/keelvm/keel/protocol/grpc"
)

// exeSealed checks how libcontainer sealed the agent binary that a
// container's init runs as (CVE-2019-5736: the container must never be able
// to write the agent). libcontainer prefers a private read-only overlayfs
// over the binary's directory, at no cost; without overlayfs in the kernel
// (Debian's kernel with the overlay module not loaded: fsopen ENODEV) it
// copies the whole ~11 MB binary into a sealed memfd on every create and
// exec, which under TCG made each CreateContainer 1.1-1.6 s slower
// (median 1.5-2.0 s vs 0.40 s). A createRuntime hook, run while the init
// still runs the sealed binary, reads its /proc/<pid>/exe and tries to
// open it for writing (in a subshell: a failed redirection of the special
// builtin ':' ends the shell); the container prints what the hook saw.
func exeSealed(ctx context.Context, t *testing.T, a pb.AgentServiceService) {
	t.Helper()
	bb := ContainerRootfs + "/bin/busybox"
	script := `pid=$(` + bb + ` sed -n 's/.*"pid": *\([0-9][0-9]*\).*/\1/p'); ` +
		`exe=$(` + bb + ` readlink /proc/$pid/exe); ` +
		`if ( : >> /proc/$pid/exe ) 2>/dev/null; then w=writable; else w=read-only; fi; ` +
		`echo "$pid|$exe|$w" > ` + ContainerRootfs + `/exe-seal`
	spec := BusyboxSpec(ContainerRootfs, "/bin/cat", "/exe-seal")
	spec.Hooks = &pb.Hooks{CreateRuntime: []*pb.Hook{{Path: bb, Args: []string{"busybox", "sh", "-c", script}}}}
	out, errOut, code, err := RunContainer(ctx, a, "exeseal", spec)
	if err != nil || code != 0 {
		t.Fatalf("container whose hook inspects its init's binary: status %d, %v (%s)", code, err, errOut)
	}
	f := strings.Split(strings.TrimSpace(out), "|")
	if len(f) != 3 || f[0] == "" || f[1] == "" {
		t.Fatalf("hook output %q, want pid|exe|writability", out)
	}
	t.Logf("container init ran as %q (%s)", f[1], f[2])
	if f[2] != "read-only" {
		t.Errorf("the container init's binary %q could be opened for writing (CVE-2019-5736)", f[1])
	}
	// The memfd copy reads "/memfd:runc_cloned:/proc/self/exe (deleted)",
	// the O_TMPFILE one "<state dir>/#<ino> (deleted)".
	if strings.Contains(f[1], "memfd:") || strings.HasSuffix(f[1], "(deleted)") {
		t.Errorf("the container init runs a copy of the agent (%q): libcontainer fell back from the sealed overlayfs to copying the binary on every create (overlayfs missing from the guest kernel?)", f[1])
	}
}
