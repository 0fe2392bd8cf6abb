package errdefs

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// codeOf lists the classes in the order ToStatus tries them: an error that
// wraps two classes gets the first one's code.
var codeOf = []struct {
	class error
	code  codes.Code
}{
	{ErrInvalidArgument, codes.InvalidArgument},
	{ErrNotFound, codes.NotFound},
	{ErrAlreadyExists, codes.AlreadyExists},
	{ErrUnimplemented, codes.Unimplemented},
	{ErrResourceExhausted, codes.ResourceExhausted},
	{ErrFailedPrecondition, codes.FailedPrecondition},
	{ErrPermissionDenied, codes.PermissionDenied},
	{ErrUnavailable, codes.Unavailable},
	{ErrDeadlineExceeded, codes.DeadlineExceeded},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
	{context.Canceled, codes.Canceled},
}

// Code is the gRPC code of err: its status's if it carries one, else its
// class's, else Internal (OK for nil).
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if st, ok := status.FromError(err); ok {
		return st.Code()
	}
	for _, c := range codeOf {
		if errors.Is(err, c.class) {
			return c.code
		}
	}
	return codes.Internal
}

// ToStatus is the one conversion of a domain error to a ttrpc/gRPC status,
// called by the handlers at the RPC edge. The message is err's text (which
// names the field). A status error a handler created deliberately is
// returned unchanged; an error of no class is Internal. nil stays nil.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err
	}
	return status.Error(Code(err), err.Error())
}
