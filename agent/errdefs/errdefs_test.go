package errdefs

import (
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestToStatus: every class, twice wrapped with %w, gets its code and keeps
// the whole message (the field the wrappers named included).
func TestToStatus(t *testing.T) {
	derived := New(ErrFailedPrecondition, "wrong state")
	for _, c := range []struct {
		class error
		code  codes.Code
	}{
		{ErrInvalidArgument, codes.InvalidArgument},
		{ErrNotFound, codes.NotFound},
		{ErrAlreadyExists, codes.AlreadyExists},
		{ErrFailedPrecondition, codes.FailedPrecondition},
		{ErrPermissionDenied, codes.PermissionDenied},
		{ErrResourceExhausted, codes.ResourceExhausted},
		{ErrUnimplemented, codes.Unimplemented},
		{ErrUnavailable, codes.Unavailable},
		{ErrDeadlineExceeded, codes.DeadlineExceeded},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{context.Canceled, codes.Canceled},
		{derived, codes.FailedPrecondition},
		{errors.New("disk on fire"), codes.Internal},
	} {
		err := fmt.Errorf("create container: %w", fmt.Errorf("oci.mounts[2]: %w", c.class))
		want := "create container: oci.mounts[2]: " + c.class.Error()
		st, ok := status.FromError(ToStatus(err))
		if !ok || st.Code() != c.code || st.Message() != want {
			t.Errorf("ToStatus(%v) = %v %q (status %v), want %v %q", err, st.Code(), st.Message(), ok, c.code, want)
		}
		if got := Code(err); got != c.code {
			t.Errorf("Code(%v) = %v, want %v", err, got, c.code)
		}
	}
}

func TestNewKeepsTextAndClass(t *testing.T) {
	err := fmt.Errorf("container %q: %w", "a", New(ErrNotFound, "not found"))
	if err.Error() != `container "a": not found` || !errors.Is(err, ErrNotFound) || errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("err = %q, Is NotFound %v", err, errors.Is(err, ErrNotFound))
	}
	// Two sentinels of one class stay distinct.
	if errors.Is(New(ErrNotFound, "x"), New(ErrNotFound, "x")) {
		t.Fatal("derived sentinels compare equal")
	}
}

// TestStatusPassesThrough: a status a handler made deliberately is returned
// as is; one wrapped with %w keeps its code and gets the wrapper's text.
func TestStatusPassesThrough(t *testing.T) {
	st := status.Error(codes.Unavailable, "storage handling is not enabled")
	if got := ToStatus(st); got != st {
		t.Fatalf("ToStatus(status) = %v, want the same error", got)
	}
	// Its class does not matter: the status's own code wins.
	wrapped := fmt.Errorf("add swap: %w (%w)", st, ErrInvalidArgument)
	got, _ := status.FromError(ToStatus(wrapped))
	if got.Code() != codes.Unavailable || got.Message() != wrapped.Error() {
		t.Fatalf("ToStatus(wrapped status) = %v %q", got.Code(), got.Message())
	}
	if ToStatus(nil) != nil || Code(nil) != codes.OK {
		t.Fatal("nil must stay nil / OK")
	}
}

// TestOneConversion: handler packages convert with ToStatus, not with a
// toStatus of their own nor any switch mapping errors.Is cases to codes.
func TestOneConversion(t *testing.T) {
	n := 0
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		n++
		if f.Name.Name == "errdefs" {
			return nil
		}
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			if strings.EqualFold(fn.Name.Name, "toStatus") {
				t.Errorf("%s: func %s: convert with errdefs.ToStatus instead", path, fn.Name.Name)
			}
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				if cc, ok := n.(*ast.CaseClause); ok && callsErrorsIs(cc.List) && mentions(cc.Body, "codes") {
					t.Errorf("%s: %s maps an error class to a code: give the error a class (errdefs.New) and convert with errdefs.ToStatus",
						fset.Position(cc.Pos()), fn.Name.Name)
				}
				return true
			})
		}
		return nil
	})
	if err != nil || n < 50 {
		t.Fatalf("walked %d files of agent/: %v", n, err)
	}
}

// callsErrorsIs reports whether any of exprs calls errors.Is.
func callsErrorsIs(exprs []ast.Expr) bool {
	for _, e := range exprs {
		if c, ok := e.(*ast.CallExpr); ok && isSel(c.Fun, "errors", "Is") {
			return true
		}
	}
	return false
}

// mentions reports whether stmts use package pkg (a selector pkg.X).
func mentions(stmts []ast.Stmt, pkg string) bool {
	found := false
	for _, s := range stmts {
		ast.Inspect(s, func(n ast.Node) bool {
			if se, ok := n.(*ast.SelectorExpr); ok && isSel(se, pkg, "") {
				found = true
			}
			return !found
		})
	}
	return found
}

func isSel(e ast.Expr, pkg, name string) bool {
	se, ok := e.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	id, ok := se.X.(*ast.Ident)
	return ok && id.Name == pkg && (name == "" || se.Sel.Name == name)
}
