package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// usageError is a command-line mistake: poolctl prints it with a hint and
// exits with status 2.
type usageError struct {
	msg string
}

// Error returns the message, without the "poolctl: " prefix.
func (e *usageError) Error() string { return e.msg }

// usagef returns a *usageError.
func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// formatError renders err for stderr. A gRPC status becomes
//
//	poolctl: <CODE> <REASON>: <message>
//	  <metadata key>: <value>          (ErrorInfo metadata, sorted by key)
//	  <field>: <description>           (BadRequest field violations)
//	  retry after: <delay>             (RetryInfo)
//
// with <REASON> left out when the status has no ErrorInfo. Any other error
// is "poolctl: <error>". The result ends with a newline.
func formatError(err error) string {
	var b strings.Builder
	var gs interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &gs) || gs.GRPCStatus() == nil {
		_, _ = fmt.Fprintf(&b, "poolctl: %v\n", err)
		return b.String()
	}
	// A wrapped status keeps the wrapper's context in front of the message.
	prefix := ""
	if msg := err.Error(); !strings.HasPrefix(msg, "rpc error:") {
		if i := strings.Index(msg, ": rpc error:"); i > 0 {
			prefix = msg[:i] + ": "
		}
	}
	st := gs.GRPCStatus()
	head := code.Code(st.Code()).String()
	var (
		info  *errdetails.ErrorInfo
		bad   *errdetails.BadRequest
		retry *errdetails.RetryInfo
	)
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if info == nil {
				info = d
			}
		case *errdetails.BadRequest:
			bad = d
		case *errdetails.RetryInfo:
			retry = d
		}
	}
	if info != nil && info.GetReason() != "" {
		head += " " + info.GetReason()
	}
	// The server's text is printed through printable: it may quote what a
	// client sent.
	_, _ = fmt.Fprintf(&b, "poolctl: %s%s: %s\n", printable(prefix), printable(head), printable(st.Message()))
	if info != nil {
		for _, k := range slices.Sorted(maps.Keys(info.GetMetadata())) {
			_, _ = fmt.Fprintf(&b, "  %s: %s\n", printable(k), printable(info.GetMetadata()[k]))
		}
	}
	for _, v := range bad.GetFieldViolations() {
		_, _ = fmt.Fprintf(&b, "  %s: %s\n", printable(v.GetField()), printable(v.GetDescription()))
	}
	if d := retry.GetRetryDelay(); d != nil {
		_, _ = fmt.Fprintf(&b, "  retry after: %s\n", d.AsDuration())
	}
	return b.String()
}

// unreachableError is a call that could not reach poold: the connection
// failed, or nothing answered before the deadline while none was ready.
type unreachableError struct {
	server string // --server as given
	err    error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("cannot reach poold at %s: %v", e.server, e.err)
}

func (e *unreachableError) Unwrap() error { return e.err }

// asUnreachable wraps err in an *unreachableError when it says that poold
// could not be reached: UNAVAILABLE without poolplane's ErrorInfo (poold's
// own UNAVAILABLE errors, such as an upstream's open circuit, carry one),
// or DEADLINE_EXCEEDED while the connection never became ready (an
// address that drops packets).
func asUnreachable(err error, server string, ready bool) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.Unavailable:
		for _, d := range st.Details() {
			if _, ok := d.(*errdetails.ErrorInfo); ok {
				return err
			}
		}
	case codes.DeadlineExceeded:
		if ready {
			return err
		}
	default:
		return err
	}
	return &unreachableError{server: server, err: err}
}

// reportError prints err to w and returns the exit status: 2 for a usage
// error, else 1.
func reportError(w io.Writer, err error) int {
	var ue *usageError
	if errors.As(err, &ue) {
		_, _ = fmt.Fprintf(w, "poolctl: %s\nRun 'poolctl help' for usage.\n", ue.msg)
		return 2
	}
	var ue2 *unreachableError
	if errors.As(err, &ue2) {
		st, _ := status.FromError(ue2.err)
		_, _ = fmt.Fprintf(w, "poolctl: %s: cannot reach poold at %s: %s\n  is poold running at %s? (set the address with --server, $POOLPLANE_SERVER or a context)\n",
			code.Code(st.Code()).String(), printable(ue2.server), printable(st.Message()), printable(ue2.server))
		return 1
	}
	_, _ = io.WriteString(w, formatError(err))
	return 1
}
