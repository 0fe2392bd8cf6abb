// Package stdio owns the standard streams of one container process inside
// the guest: the pipes or the pty given to libcontainer, and the host-facing
// operations behind Kata's WriteStdin, ReadStdout, ReadStderr, CloseStdin and
// TtyWinResize RPCs, plus the passthrough-fd fast path (Attach*).
//
// Lifecycle, as the container code drives it with libcontainer:
//
//	s, err := stdio.New(stdio.Options{Terminal: tty, Stdin: wantStdin, PipeSize: pipeSize})
//	if tty {
//		process.ConsoleSocket = s.ConsoleSocket()
//	} else {
//		in, out, errf := s.ChildFiles()
//		// Assign the *os.File values themselves: a nil *os.File stored in
//		// an io.Reader is not a nil interface.
//		process.Stdin, process.Stdout, process.Stderr = in, out, errf
//	}
//	err = container.Run(process)
//	s.CloseChildSide() // on success and on failure
//	// optional passfd: conn, err := listener.Take(port, passfd.TakeTimeout); s.AttachStdout(conn)
//	// RPCs: s.Write, s.CloseStdin, s.ReadStdout, s.ReadStderr, s.Resize
//	// after the process is reaped: s.ProcessExited()
//	// when the process is removed: s.Close()
//
// Guarantees, each enforced by a test in this package:
//
//   - No byte is lost or reordered. Reads go straight to the pipe or pty
//     master; nothing is buffered in the agent, so a slow reader backpressures
//     the process through the full pipe (memory use stays bounded).
//   - A read returns up to MaxReadLen bytes; io.EOF means the stream ended
//     (the RPC handler answers with empty data, Kata's EOF signal).
//   - A read holds no buffer while it waits. Once data is there it reads
//     the pipe straight into the buffer it returns, sized to what the pipe
//     holds, with no copy. ReadStdoutWithHeadroom leaves room in front of
//     the data so the RPC handler can encode the answer in place
//     (protocol/readstream); ReadStdoutInto takes the buffer from the
//     caller's pool (agent/streamread writes the reply frame itself and
//     reuses it); ReadStdoutNow never waits, for a caller that answers from
//     its connection's reader when output is already there.
//   - An exited process never stalls readers forever. Kata agent#370 and
//     kata-containers#4747: a background grandchild that inherited stdout
//     keeps the pipe open, so EOF never comes. After ProcessExited, readers
//     keep receiving everything already in the pipe; once ExitGrace has passed
//     and the pipe is empty, the stream reports EOF even if a grandchild still
//     holds the write end. Everything the exited process wrote was in the
//     pipe before it exited, so none of it is lost.
//   - Writes to stdin never block forever once the process has exited: after
//     ExitGrace they fail with ErrProcessExited.
//   - The passfd fast path moves stdout/stderr with splice(2) from the pipe
//     straight into the socket (no copy through the agent), falling back to
//     a user-space copy for ptys and connections that cannot splice. An
//     attached stream's pipe grows to AttachPipeSize within the
//     process-wide AttachPipeBudget, given back by Close.
//   - Close releases every descriptor (tests compare /proc/self/fd counts).
package stdio
