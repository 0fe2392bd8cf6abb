package stdio

import (
	"sync"

	"golang.org/x/sys/unix"
)

// Pipe capacity for the passfd fast path.
//
// A container's stdout pipe (64 KiB by default) bounds how much the
// process writes per wake-up of the agent: with splice(2) moving each pipe
// load to the host, a 64 KiB pipe means one process switch per 64 KiB.
// Under QEMU TCG a switch costs more than the copy (tests/bench/vmbench
// BenchmarkStdoutVsockPaired, 32 MiB, three alternating runs each, load
// 17-26): QEMU spent 32-50 ms of CPU per MB streamed with 64 KiB pipes and
// 19-20 ms with 1 MiB (raw AF_VSOCK: 8-19).
//
// So a stream the host attached to a passfd connection has its pipe grown
// to AttachPipeSize, unless agent.container_pipe_size chose a size. The
// extra capacity is memory only while the host reads slower than the
// process writes (pipe pages exist only while they hold data), but it is
// charged at once, page for page, to the owner's pipe accounting
// (/proc/sys/fs/pipe-user-pages-soft, 64 MiB by default, shared by every
// uid-0 process of the guest: beyond it unprivileged ones get 8 KiB
// pipes). All grown pipes together therefore stay within AttachPipeBudget,
// a quarter of that default; past it a stream keeps its pipe as it is.
// Memory grows with the streams attached, up to a fixed total, not with
// the containers.
const (
	// AttachPipeSize is the capacity an attached stdout/stderr pipe gets.
	AttachPipeSize = 1 << 20
	// AttachPipeBudget bounds the capacity all grown pipes add together:
	// 16 MiB is 16 streams at AttachPipeSize.
	AttachPipeBudget = 16 << 20
)

// pipeBudget accounts AttachPipeBudget across all IOs of the process.
var pipeBudget = &budget{limit: AttachPipeBudget}

type budget struct {
	mu          sync.Mutex
	limit, used int
}

// take reserves n bytes, or nothing and false if they do not fit.
func (b *budget) take(n int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.limit {
		return false
	}
	b.used += n
	return true
}

func (b *budget) give(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
}

func (b *budget) inUse() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// growPipe raises the capacity of st's pipe to size, charging the growth
// to b, and returns the bytes charged (0 when it already holds size, is
// not a pipe, or the budget or the kernel refuses: the stream then works
// as it is). The caller gives them back when the pipe is closed.
func (st *outStream) growPipe(size int, b *budget) int {
	rc, err := st.f.SyscallConn()
	if err != nil {
		return 0
	}
	charged := 0
	_ = rc.Control(func(fd uintptr) {
		cur, err := unix.FcntlInt(fd, unix.F_GETPIPE_SZ, 0)
		if err != nil || cur >= size || !b.take(size-cur) {
			return
		}
		if _, err := unix.FcntlInt(fd, unix.F_SETPIPE_SZ, size); err != nil {
			b.give(size - cur)
			return
		}
		charged = size - cur
	})
	return charged
}
