package vmtest

import (
	"context"
	"fmt"
	"strings"

	pb "github.com/keelvm/keel/protocol/grpc"
)

// RunContainer creates and starts container id from spec (its init process
// has exec id id), reads its stdout and then its stderr to EOF, waits for it
// and removes it. It suits short outputs: stderr is drained only after
// stdout ended, so a container filling its stderr pipe first would stall.
func RunContainer(ctx context.Context, a pb.AgentServiceService, id string, spec *pb.Spec) (stdout, stderr string, status int32, err error) {
	return RunContainerRequest(ctx, a, &pb.CreateContainerRequest{ContainerId: id, ExecId: id, OCI: spec})
}

// RunContainerRequest is RunContainer for a prepared request (devices,
// storages, ...); an empty ExecId means the container id.
func RunContainerRequest(ctx context.Context, a pb.AgentServiceService, req *pb.CreateContainerRequest) (stdout, stderr string, status int32, err error) {
	id, execID := req.ContainerId, req.ExecId
	if execID == "" {
		execID = id
	}
	if _, err := a.CreateContainer(ctx, req); err != nil {
		return "", "", 0, fmt.Errorf("CreateContainer %s: %w", id, err)
	}
	defer func() {
		if _, e := a.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: id}); e != nil && err == nil {
			err = fmt.Errorf("RemoveContainer %s: %w", id, e)
		}
	}()
	if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: id}); err != nil {
		return "", "", 0, fmt.Errorf("StartContainer %s: %w", id, err)
	}
	if stdout, err = readStream(ctx, a.ReadStdout, id, execID); err != nil {
		return stdout, "", 0, fmt.Errorf("ReadStdout %s: %w", id, err)
	}
	if stderr, err = readStream(ctx, a.ReadStderr, id, execID); err != nil {
		return stdout, stderr, 0, fmt.Errorf("ReadStderr %s: %w", id, err)
	}
	w, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: id, ExecId: execID})
	if err != nil {
		return stdout, stderr, 0, fmt.Errorf("WaitProcess %s: %w", id, err)
	}
	return stdout, stderr, w.Status, nil
}

// readStream reads one of the init process's streams until Kata's EOF (an
// empty answer), 1 MiB per call.
func readStream(ctx context.Context, read func(context.Context, *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error), id, execID string) (string, error) {
	var b strings.Builder
	for {
		r, err := read(ctx, &pb.ReadStreamRequest{ContainerId: id, ExecId: execID, Len: 1 << 20})
		if err != nil {
			return b.String(), err
		}
		if len(r.Data) == 0 {
			return b.String(), nil
		}
		b.Write(r.Data)
	}
}
