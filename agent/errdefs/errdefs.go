// Package errdefs holds the agent's error classes: a handful of sentinels,
// one per gRPC code a handler answers with, that domain packages wrap (with
// %w, or by deriving their own sentinels with New) so that the RPC edge
// turns any domain error into a status with one function, ToStatus, instead
// of one switch per handler package.
//
// Domain packages stay free of protobuf: they import the classes, not
// grpc/codes, and name the field the usual way, fmt.Errorf("oci.mounts[%d]:
// ...: %w", i, ErrInvalid). Only ToStatus knows the codes.
package errdefs

import "errors"

// Error classes. Each names the gRPC code ToStatus gives an error that
// wraps it.
var (
	// ErrInvalidArgument: the request is malformed (InvalidArgument).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNotFound: the object the request names does not exist (NotFound).
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: the id or object is taken (AlreadyExists).
	ErrAlreadyExists = errors.New("already exists")
	// ErrFailedPrecondition: the object is in the wrong state, or the guest
	// lacks what the operation needs (FailedPrecondition).
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrPermissionDenied: the request would reach what it may not
	// (PermissionDenied).
	ErrPermissionDenied = errors.New("permission denied")
	// ErrResourceExhausted: a bound was reached; retry later
	// (ResourceExhausted).
	ErrResourceExhausted = errors.New("resource exhausted")
	// ErrUnimplemented: a feature Keel does not support (Unimplemented).
	ErrUnimplemented = errors.New("not implemented")
	// ErrUnavailable: the service is shutting down or not enabled
	// (Unavailable).
	ErrUnavailable = errors.New("unavailable")
	// ErrDeadlineExceeded: the operation did not finish in time
	// (DeadlineExceeded; context.DeadlineExceeded maps there too).
	ErrDeadlineExceeded = errors.New("deadline exceeded")
)

// classed is an error with its own text that belongs to a class.
type classed struct {
	msg   string
	class error
}

func (e *classed) Error() string { return e.msg }
func (e *classed) Unwrap() error { return e.class }

// New returns an error whose text is msg and which is of class
// (errors.Is(err, class)). Domain packages derive their sentinels with it,
// keeping their text: ErrState = errdefs.New(errdefs.ErrFailedPrecondition,
// "wrong state").
func New(class error, msg string) error {
	return &classed{msg: msg, class: class}
}
