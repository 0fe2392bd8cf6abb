package guestbench

import (
	"context"
	"fmt"
	"time"

	pb "github.com/keelvm/keel/protocol/grpc"
)

// Phases of LifecyclePhases, as timed from the host (each RPC's round trip).
const (
	PhaseCreate = iota // CreateContainer
	PhaseStart         // StartContainer
	PhaseRun           // ReadStdout until EOF + WaitProcess
	PhaseRemove        // RemoveContainer
	NPhases
)

// PhaseUnits names each phase's benchmark metric.
var PhaseUnits = [NPhases]string{"create-ms", "start-ms", "run-ms", "remove-ms"}

// LifecyclePhases is what a host runtime does for `run /bin/true` without
// a terminal, on the busybox rootfs at rootfs: CreateContainer,
// StartContainer, ReadStdout until EOF, WaitProcess, RemoveContainer. It
// returns how long each phase took. The wire, A/B and in-guest benchmarks
// all time this one sequence.
func LifecyclePhases(ctx context.Context, a pb.AgentServiceService, rootfs, id string) (ph [NPhases]time.Duration, _ error) {
	t := time.Now()
	lap := func(i int) {
		now := time.Now()
		ph[i], t = now.Sub(t), now
	}
	if _, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: id, ExecId: id, OCI: Spec(rootfs, "/bin/true")}); err != nil {
		return ph, fmt.Errorf("CreateContainer %s: %w", id, err)
	}
	lap(PhaseCreate)
	if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: id}); err != nil {
		return ph, fmt.Errorf("StartContainer %s: %w", id, err)
	}
	lap(PhaseStart)
	if err := Drain(ctx, a, id, id); err != nil {
		return ph, err
	}
	w, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: id, ExecId: id})
	if err != nil {
		return ph, fmt.Errorf("WaitProcess %s: %w", id, err)
	}
	if w.Status != 0 {
		return ph, fmt.Errorf("/bin/true in %s: status %d", id, w.Status)
	}
	lap(PhaseRun)
	if _, err := a.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: id}); err != nil {
		return ph, fmt.Errorf("RemoveContainer %s: %w", id, err)
	}
	lap(PhaseRemove)
	return ph, nil
}

// Drain reads a process's stdout and fails unless the first answer is EOF
// (empty): /bin/true writes nothing.
func Drain(ctx context.Context, a pb.AgentServiceService, cid, eid string) error {
	r, err := a.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: cid, ExecId: eid, Len: 32 << 10})
	if err != nil {
		return fmt.Errorf("ReadStdout %s/%s: %w", cid, eid, err)
	}
	if len(r.Data) != 0 {
		return fmt.Errorf("ReadStdout %s/%s: unexpected output %q", cid, eid, r.Data)
	}
	return nil
}
