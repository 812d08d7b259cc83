package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// Sentinel errors. Errors returned by the SDK match them with errors.Is; the
// concrete error is an *Error (or an *EndedError for ErrLeaseEnded) that
// carries the details.
var (
	// ErrBacklogFull is returned by Lease when the pool already has
	// limits.max_waiters callers queued (RESOURCE_EXHAUSTED, BACKLOG_FULL).
	// Error.RetryAfter says when to try again.
	ErrBacklogFull = errors.New("client: pool backlog full")
	// ErrAcquireTimeout is returned by Lease when no connection became free
	// within the acquire timeout: the pool's, or the context's deadline when
	// that is sooner (DEADLINE_EXCEEDED, ACQUIRE_TIMEOUT). Error.Metadata
	// holds the pool snapshot. Such errors also match
	// context.DeadlineExceeded.
	ErrAcquireTimeout = errors.New("client: acquire timeout")
	// ErrUpstreamUnavailable is returned by Lease when the pool cannot dial
	// its upstream and fails fast (UNAVAILABLE, UPSTREAM_UNAVAILABLE).
	// Error.RetryAfter says when the pool probes the upstream again.
	ErrUpstreamUnavailable = errors.New("client: upstream unavailable")
	// ErrPoolNotFound is returned by Lease and PoolStats when no pool has the
	// name (NOT_FOUND, POOL_NOT_FOUND).
	ErrPoolNotFound = errors.New("client: pool not found")
	// ErrDraining is returned by Lease when the pool is draining and grants
	// no new leases (FAILED_PRECONDITION, POOL_DRAINING).
	ErrDraining = errors.New("client: pool draining")
	// ErrPermissionDenied is returned by any call the caller's role does not
	// allow, or for a pool whose upstream is outside the allowlist
	// (PERMISSION_DENIED).
	ErrPermissionDenied = errors.New("client: permission denied")
	// ErrUpstreamNotAllowed is returned by Lease when the pool's upstream
	// resolved to an address outside the server's allowlist
	// (PERMISSION_DENIED, UPSTREAM_NOT_ALLOWED). Such errors also match
	// ErrPermissionDenied.
	ErrUpstreamNotAllowed = errors.New("client: upstream not allowed")
	// ErrQuotaExceeded is returned by Lease when the caller already holds
	// as many leases as its principal may, and by WatchStats when the
	// server serves its most stats watchers (RESOURCE_EXHAUSTED,
	// QUOTA_EXCEEDED). Error.Metadata["quota"] names the quota.
	ErrQuotaExceeded = errors.New("client: quota exceeded")
	// ErrReplicaFenced is returned by Lease when the replica that got the
	// lease cannot reach etcd and holds no share of the pool's fleet-wide
	// limit (UNAVAILABLE, REPLICA_FENCED), and no other replica took the
	// lease on retry. Error.RetryAfter says when to try this replica again.
	ErrReplicaFenced = errors.New("client: replica fenced")
	// ErrUnavailable is returned by any call when no poold replica can take
	// it: none is reachable and serving, or the one that took the call is
	// shutting down (UNAVAILABLE with no reason, or POOL_CLOSED). Try again
	// later; Lease has already tried another replica when there was one.
	ErrUnavailable = errors.New("client: server unavailable")
	// ErrUnauthenticated is returned by any call made without valid
	// credentials (UNAUTHENTICATED); see WithToken and WithTLS.
	ErrUnauthenticated = errors.New("client: unauthenticated")
	// ErrProtocol is returned when the lease stream broke its protocol:
	// the server rejected a frame (INVALID_ARGUMENT, PROTOCOL_VIOLATION), or
	// the SDK received a frame it did not expect. The stream is discarded.
	ErrProtocol = errors.New("client: lease protocol violation")
	// ErrClientClosed is returned by calls on a closed Client, and by Read
	// and Write on a Conn whose Client was closed.
	ErrClientClosed = errors.New("client: closed")
	// ErrLeaseEnded is matched by the *EndedError that Read and Write return
	// after the server ended a lease for a reason other than the upstream's
	// EOF: an upstream error, a revocation, max_lease_duration or shutdown.
	ErrLeaseEnded = errors.New("client: lease ended")
	// ErrUndelivered is matched by the error Close and Discard return when
	// bytes that Write accepted may not have reached the upstream: the
	// upstream took nothing for the release timeout (see
	// WithReleaseTimeout), it failed, or the stream broke before the server
	// confirmed them. The connection is closed, never reused.
	ErrUndelivered = errors.New("client: written bytes not delivered")
)

// Error is a failed call: the gRPC status with its poolplane details. Every
// error status poolplane returns carries a google.rpc.ErrorInfo whose reason
// is one of poolv1.ErrorReason's names; Error matches the sentinel for that
// reason with errors.Is, and matches context.DeadlineExceeded or
// context.Canceled when the code is DEADLINE_EXCEEDED or CANCELLED.
type Error struct {
	// Code is the gRPC status code.
	Code codes.Code
	// Reason is the ErrorInfo reason (for example "BACKLOG_FULL"), or ""
	// when the status had none (transport errors).
	Reason string
	// Message is the status message.
	Message string
	// Metadata is the ErrorInfo metadata (for example the pool snapshot of
	// an ACQUIRE_TIMEOUT), or nil.
	Metadata map[string]string
	// RetryAfter is the RetryInfo delay, or 0 when the status had none.
	RetryAfter time.Duration

	err error // the status error (or context error) this was made from
}

// Error returns "poolplane: <code> <reason>: <message>".
func (e *Error) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("poolplane: %s %s: %s", e.Code, e.Reason, e.Message)
	}
	return fmt.Sprintf("poolplane: %s: %s", e.Code, e.Message)
}

// Unwrap returns the underlying gRPC status error (status.FromError works
// on an *Error) or context error.
func (e *Error) Unwrap() error { return e.err }

// Is reports whether e matches target: the sentinel for e's reason,
// ErrPermissionDenied and ErrUnauthenticated by code, ErrUnavailable by
// code and reason, and
// context.DeadlineExceeded and context.Canceled by code.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrBacklogFull:
		return e.Reason == poolv1.ErrorReason_BACKLOG_FULL.String()
	case ErrAcquireTimeout:
		return e.Reason == poolv1.ErrorReason_ACQUIRE_TIMEOUT.String()
	case ErrUpstreamUnavailable:
		return e.Reason == poolv1.ErrorReason_UPSTREAM_UNAVAILABLE.String()
	case ErrPoolNotFound:
		return e.Reason == poolv1.ErrorReason_POOL_NOT_FOUND.String()
	case ErrDraining:
		return e.Reason == poolv1.ErrorReason_POOL_DRAINING.String()
	case ErrProtocol:
		return e.Reason == poolv1.ErrorReason_PROTOCOL_VIOLATION.String()
	case ErrUpstreamNotAllowed:
		return e.Reason == poolv1.ErrorReason_UPSTREAM_NOT_ALLOWED.String()
	case ErrQuotaExceeded:
		return e.Reason == poolv1.ErrorReason_QUOTA_EXCEEDED.String()
	case ErrReplicaFenced:
		return e.Reason == poolv1.ErrorReason_REPLICA_FENCED.String()
	case ErrUnavailable:
		return e.Code == codes.Unavailable &&
			(e.Reason == "" || e.Reason == poolv1.ErrorReason_POOL_CLOSED.String())
	case ErrPermissionDenied:
		return e.Code == codes.PermissionDenied
	case ErrUnauthenticated:
		return e.Code == codes.Unauthenticated
	case context.DeadlineExceeded:
		return e.Code == codes.DeadlineExceeded
	case context.Canceled:
		return e.Code == codes.Canceled
	}
	return false
}

// fromStatus turns a gRPC error into an *Error carrying its details. Errors
// that are not statuses are returned unchanged.
func fromStatus(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	e = &Error{Code: st.Code(), Message: st.Message(), err: err}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			e.Reason = d.GetReason()
			e.Metadata = d.GetMetadata()
		case *errdetails.RetryInfo:
			e.RetryAfter = d.GetRetryDelay().AsDuration()
		}
	}
	return e
}

// protocolError is a frame the SDK did not expect.
func protocolError(format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	return &Error{
		Code:    codes.Internal,
		Reason:  poolv1.ErrorReason_PROTOCOL_VIOLATION.String(),
		Message: msg,
		err:     status.Error(codes.Internal, msg),
	}
}

// acquireTimeout is the error of a Lease whose context deadline passed
// before the server answered: it matches ErrAcquireTimeout and
// context.DeadlineExceeded alike.
func acquireTimeout(pool string) error {
	return &Error{
		Code:    codes.DeadlineExceeded,
		Reason:  poolv1.ErrorReason_ACQUIRE_TIMEOUT.String(),
		Message: fmt.Sprintf("lease %s: context deadline exceeded before a connection was granted", pool),
		err:     context.DeadlineExceeded,
	}
}

// EndedError is returned by Read and Write after the server ended the lease
// for a reason other than the upstream's EOF (which Read reports as io.EOF).
// It matches ErrLeaseEnded with errors.Is.
type EndedError struct {
	// Reason says why the lease ended, for example
	// poolv1.EndReason_END_REASON_REVOKED.
	Reason poolv1.EndReason
	// Message is the server's detail, for example the upstream error.
	Message string
}

// Error returns "client: lease ended: <reason>[: <message>]".
func (e *EndedError) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("client: lease ended: %s: %s", e.Reason, e.Message)
	}
	return fmt.Sprintf("client: lease ended: %s", e.Reason)
}

// Is reports whether target is ErrLeaseEnded.
func (e *EndedError) Is(target error) bool { return target == ErrLeaseEnded }
