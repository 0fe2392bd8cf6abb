// Package attach connects a process running under the agent to local
// streams, the way `docker run`/`ctr task attach` do, over the agent's
// stream RPCs: stdin is forwarded with WriteStdin (CloseStdin at its end),
// stdout and stderr are copied live from ReadStdout/ReadStderr as the
// process writes them, terminal sizes go out as TtyWinResize, local
// signals as SignalProcess, and the process's exit status comes back from
// WaitProcess.
package attach

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	pb "github.com/keelvm/keel/protocol/grpc"
)

// ReadChunk is the most a single ReadStdout/ReadStderr asks for: small
// enough that output shows up as it is written, large enough for bulk.
const ReadChunk = 32 << 10

// DrainAfterExit bounds how long output is still read after the process
// exited: a background child that inherited the pipes keeps them open,
// and its output is not the process's.
const DrainAfterExit = 2 * time.Second

// WinSize is a terminal size in characters.
type WinSize struct{ Rows, Cols uint16 }

// Options say which process to attach to and where its streams go.
type Options struct {
	ContainerID string
	ExecID      string // the container's init process: its ExecID (or "")
	// Stdin is forwarded until it ends, then the process's stdin is
	// closed. nil closes it at once.
	Stdin io.Reader
	// Stdout gets the process's stdout (its pty with Terminal), Stderr
	// its stderr; nil discards.
	Stdout, Stderr io.Writer
	// Terminal: the process has a pty, so there is no separate stderr.
	Terminal bool
	// Resize delivers terminal sizes to forward (Terminal only).
	Resize <-chan WinSize
	// Signals are forwarded to the process.
	Signals <-chan os.Signal
}

// Run copies the streams until the process's output ends and returns its
// exit status (128+N for a signal, as WaitProcess reports it). An error
// means the agent failed or ctx ended, not that the process did.
func Run(ctx context.Context, a pb.AgentServiceService, o Options) (int32, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
		cancel()
	}
	// Output first: reads are pending before the process can write.
	streams := []struct {
		read func(context.Context, *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error)
		w    io.Writer
		name string
	}{{a.ReadStdout, o.Stdout, "stdout"}}
	if !o.Terminal {
		streams = append(streams, struct {
			read func(context.Context, *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error)
			w    io.Writer
			name string
		}{a.ReadStderr, o.Stderr, "stderr"})
	}
	outCtx, stopOut := context.WithCancel(ctx)
	defer stopOut()
	for _, s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := copyOut(outCtx, s.read, o.ContainerID, o.ExecID, s.w); err != nil && outCtx.Err() == nil {
				fail(fmt.Errorf("unable to read the process's %s: %w", s.name, err))
			}
		}()
	}
	outDone := make(chan struct{})
	go func() { wg.Wait(); close(outDone) }()

	// Input, resizes and signals run until the process is gone; their
	// goroutines end with ctx (a blocked local read is left behind, as
	// the caller is about to exit or close the reader).
	go func() {
		if err := copyIn(ctx, a, o.ContainerID, o.ExecID, o.Stdin); err != nil && ctx.Err() == nil {
			// The process may have exited before reading all its input:
			// that is not the caller's failure, the exit status tells.
			if !isGone(err) {
				fail(fmt.Errorf("unable to forward stdin: %w", err))
			}
		}
	}()
	go forward(ctx, a, o)

	type waited struct {
		status int32
		err    error
	}
	wc := make(chan waited, 1)
	go func() {
		r, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: o.ContainerID, ExecId: o.ExecID})
		if err != nil {
			wc <- waited{err: err}
			return
		}
		wc <- waited{status: r.Status}
	}()
	var w waited
	select {
	case w = <-wc:
	case <-ctx.Done():
		w = waited{err: ctx.Err()}
	}
	if w.err == nil {
		select {
		case <-outDone:
		case <-time.After(DrainAfterExit):
		}
	}
	stopOut()
	<-outDone
	mu.Lock()
	defer mu.Unlock()
	if len(errs) > 0 {
		return 0, errors.Join(errs...)
	}
	if w.err != nil {
		return 0, fmt.Errorf("unable to wait for the process: %w", w.err)
	}
	return w.status, nil
}

// copyOut reads one stream until the agent's end-of-stream (empty data).
func copyOut(ctx context.Context, read func(context.Context, *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error), cid, eid string, w io.Writer) error {
	if w == nil {
		w = io.Discard
	}
	for {
		r, err := read(ctx, &pb.ReadStreamRequest{ContainerId: cid, ExecId: eid, Len: ReadChunk})
		if err != nil {
			return err
		}
		if len(r.Data) == 0 {
			return nil
		}
		if _, err := w.Write(r.Data); err != nil {
			return err
		}
	}
}

// copyIn forwards r to the process's stdin and closes it at r's end. An
// empty WriteStdin would close stdin, so only non-empty chunks are sent.
func copyIn(ctx context.Context, a pb.AgentServiceService, cid, eid string, r io.Reader) error {
	if r != nil {
		buf := make([]byte, ReadChunk)
		for {
			n, err := r.Read(buf)
			for data := buf[:n]; len(data) > 0; {
				resp, werr := a.WriteStdin(ctx, &pb.WriteStreamRequest{ContainerId: cid, ExecId: eid, Data: data})
				if werr != nil {
					return werr
				}
				if resp.Len == 0 || int(resp.Len) > len(data) {
					return fmt.Errorf("WriteStdin took %d of %d bytes", resp.Len, len(data))
				}
				data = data[resp.Len:]
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
		}
	}
	_, err := a.CloseStdin(ctx, &pb.CloseStdinRequest{ContainerId: cid, ExecId: eid})
	return err
}

// forward sends terminal sizes and signals until ctx ends.
func forward(ctx context.Context, a pb.AgentServiceService, o Options) {
	for {
		select {
		case <-ctx.Done():
			return
		case ws, ok := <-o.Resize:
			if !ok {
				o.Resize = nil
				continue
			}
			if o.Terminal && ws.Rows > 0 && ws.Cols > 0 {
				_, _ = a.TtyWinResize(ctx, &pb.TtyWinResizeRequest{ContainerId: o.ContainerID, ExecId: o.ExecID, Row: uint32(ws.Rows), Column: uint32(ws.Cols)})
			}
		case sig, ok := <-o.Signals:
			if !ok {
				o.Signals = nil
				continue
			}
			if s, isSys := sig.(syscall.Signal); isSys {
				_, _ = a.SignalProcess(ctx, &pb.SignalProcessRequest{ContainerId: o.ContainerID, ExecId: o.ExecID, Signal: uint32(s)})
			}
		}
	}
}

// isGone reports an error from writing to a process that no longer reads:
// its stdin was closed or it exited.
func isGone(err error) bool {
	if errors.Is(err, syscall.EPIPE) {
		return true
	}
	msg := err.Error()
	for _, s := range []string{"broken pipe", "closed", "not found", "exited"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
