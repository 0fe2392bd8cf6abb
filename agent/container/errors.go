package container

import (
	"github.com/keelvm/keel/agent/errdefs"
	"github.com/keelvm/keel/agent/ociconv"
)

// Error classes of this package. Every error it returns wraps one of them
// with a message naming the field or object; the RPC edge (agent/containers)
// maps them to gRPC codes.
var (
	// ErrInvalid: the request is malformed (InvalidArgument).
	ErrInvalid = ociconv.ErrInvalid
	// ErrNotFound: no such sandbox, container or process (NotFound).
	ErrNotFound = errdefs.New(errdefs.ErrNotFound, "not found")
	// ErrExists: the id is taken (AlreadyExists).
	ErrExists = errdefs.New(errdefs.ErrAlreadyExists, "already exists")
	// ErrState: the object is in the wrong state for the operation
	// (FailedPrecondition).
	ErrState = errdefs.New(errdefs.ErrFailedPrecondition, "wrong state")
	// ErrUnimplemented: a feature Keel does not support yet (Unimplemented).
	ErrUnimplemented = errdefs.New(errdefs.ErrUnimplemented, "not implemented")
	// ErrTimeout: the operation did not finish in time (DeadlineExceeded).
	ErrTimeout = errdefs.New(errdefs.ErrDeadlineExceeded, "timed out")
	// ErrUnavailable: the operation cannot run now but may later, e.g. a
	// container whose earlier start is stuck (Unavailable).
	ErrUnavailable = errdefs.New(errdefs.ErrUnavailable, "unavailable")
)
