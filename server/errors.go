package server

import (
	"context"
	"errors"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of every poolplane error.
const ErrorDomain = "poolplane.dev"

// fencedRetryDelay is the RetryInfo of a REPLICA_FENCED refusal: the delay
// before trying this replica again. Another replica may be tried at once.
const fencedRetryDelay = time.Second

// toStatus maps a core error to a gRPC status error carrying exactly one
// google.rpc.ErrorInfo, plus BadRequest or RetryInfo where they fit. It is the
// only place core errors become codes; wrapped errors match through errors.Is.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok && !isCore(err) {
		return err // already a status (for example from parsing)
	}
	var (
		verr *poolmgr.ValidationError
		aerr *poolmgr.AcquireError
		rerr *poolmgr.RevisionMismatchError
	)
	switch {
	case errors.As(err, &verr):
		br := &errdetails.BadRequest{}
		for _, v := range verr.Violations {
			br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: v.Field, Description: v.Reason})
		}
		return newStatus(codes.InvalidArgument, poolv1.ErrorReason_INVALID_ARGUMENT, err.Error(), nil, br)
	case errors.As(err, &aerr):
		md := snapshotMetadata(aerr)
		switch {
		case errors.Is(err, poolmgr.ErrExhausted):
			return newStatus(codes.ResourceExhausted, poolv1.ErrorReason_BACKLOG_FULL, err.Error(), md,
				&errdetails.RetryInfo{RetryDelay: durationpb.New(100 * time.Millisecond)})
		case errors.Is(err, poolmgr.ErrAcquireTimeout):
			return newStatus(codes.DeadlineExceeded, poolv1.ErrorReason_ACQUIRE_TIMEOUT, err.Error(), md)
		case errors.Is(err, poolmgr.ErrUnavailable):
			retry := aerr.RetryAfter
			if retry <= 0 {
				retry = time.Second
			}
			return newStatus(codes.Unavailable, poolv1.ErrorReason_UPSTREAM_UNAVAILABLE, err.Error(), md,
				&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
		case errors.Is(err, poolmgr.ErrFenced):
			return newStatus(codes.Unavailable, poolv1.ErrorReason_REPLICA_FENCED, err.Error(), md,
				&errdetails.RetryInfo{RetryDelay: durationpb.New(fencedRetryDelay)})
		case errors.Is(err, poolmgr.ErrUpstreamNotAllowed):
			// Refused at dial time (the address a name resolved to):
			// not retryable, and last_dial_error names the address.
			return newStatus(codes.PermissionDenied, poolv1.ErrorReason_UPSTREAM_NOT_ALLOWED, err.Error(), md)
		case errors.Is(err, poolmgr.ErrDraining):
			md["state"] = poolmgr.StateDraining.String()
			return newStatus(codes.FailedPrecondition, poolv1.ErrorReason_POOL_DRAINING, err.Error(), md)
		}
	case errors.As(err, &rerr):
		return newStatus(codes.Aborted, poolv1.ErrorReason_ETAG_MISMATCH, err.Error(),
			map[string]string{"pool": rerr.Pool, "current_etag": etagOf(rerr.Current)})
	}
	switch {
	case errors.Is(err, poolmgr.ErrUpstreamNotAllowed):
		return newStatus(codes.PermissionDenied, poolv1.ErrorReason_UPSTREAM_NOT_ALLOWED, err.Error(), nil)
	case errors.Is(err, poolmgr.ErrInvalidConfig):
		return newStatus(codes.InvalidArgument, poolv1.ErrorReason_INVALID_ARGUMENT, err.Error(), nil)
	case errors.Is(err, poolmgr.ErrPoolNotFound):
		return newStatus(codes.NotFound, poolv1.ErrorReason_POOL_NOT_FOUND, err.Error(), nil)
	case errors.Is(err, poolmgr.ErrPoolExists):
		return newStatus(codes.AlreadyExists, poolv1.ErrorReason_POOL_EXISTS, err.Error(), nil)
	case errors.Is(err, poolmgr.ErrExhausted):
		return newStatus(codes.ResourceExhausted, poolv1.ErrorReason_BACKLOG_FULL, err.Error(), nil)
	case errors.Is(err, poolmgr.ErrAcquireTimeout):
		return newStatus(codes.DeadlineExceeded, poolv1.ErrorReason_ACQUIRE_TIMEOUT, err.Error(), nil)
	case errors.Is(err, poolmgr.ErrUnavailable):
		return newStatus(codes.Unavailable, poolv1.ErrorReason_UPSTREAM_UNAVAILABLE, err.Error(), nil)
	case errors.Is(err, poolmgr.ErrFenced):
		return newStatus(codes.Unavailable, poolv1.ErrorReason_REPLICA_FENCED, err.Error(), nil,
			&errdetails.RetryInfo{RetryDelay: durationpb.New(fencedRetryDelay)})
	case errors.Is(err, poolmgr.ErrDraining):
		return newStatus(codes.FailedPrecondition, poolv1.ErrorReason_POOL_DRAINING, err.Error(), nil)
	case errors.Is(err, poolmgr.ErrPoolClosed):
		return newStatus(codes.Unavailable, poolv1.ErrorReason_POOL_CLOSED, err.Error(), nil)
	case errors.Is(err, poolmgr.ErrLeaseNotFound):
		return newStatus(codes.NotFound, poolv1.ErrorReason_LEASE_NOT_FOUND, err.Error(), nil)
	case errors.Is(err, poolmgr.ErrRevisionMismatch):
		return newStatus(codes.Aborted, poolv1.ErrorReason_ETAG_MISMATCH, err.Error(), nil)
	case errors.Is(err, poolmgr.ErrRevisionNotFound):
		return newStatus(codes.NotFound, poolv1.ErrorReason_REVISION_NOT_FOUND, err.Error(), nil)
	case errors.Is(err, poolmgr.ErrCompacted):
		return newStatus(codes.OutOfRange, poolv1.ErrorReason_REVISION_COMPACTED, err.Error(), nil)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return newStatus(codes.Internal, poolv1.ErrorReason_INTERNAL, "internal error", nil)
}

// isCore reports whether err is (or wraps) a poolmgr error, which toStatus maps
// even when something also gave it a status.
func isCore(err error) bool {
	var verr *poolmgr.ValidationError
	var aerr *poolmgr.AcquireError
	return errors.As(err, &verr) || errors.As(err, &aerr)
}

// newStatus builds a status with one ErrorInfo and the given extra details.
func newStatus(code codes.Code, reason poolv1.ErrorReason, msg string, md map[string]string, details ...protoadapt.MessageV1) error {
	st := status.New(code, msg)
	all := make([]protoadapt.MessageV1, 0, 1+len(details))
	all = append(all, &errdetails.ErrorInfo{Reason: reason.String(), Domain: ErrorDomain, Metadata: md})
	all = append(all, details...)
	if withDetails, err := st.WithDetails(all...); err == nil {
		st = withDetails
	}
	return st.Err()
}

// invalidArgument is a request error for one field.
func invalidArgument(field, reason string) error {
	br := &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: reason}}}
	return newStatus(codes.InvalidArgument, poolv1.ErrorReason_INVALID_ARGUMENT, field+": "+reason, nil, br)
}

func snapshotMetadata(e *poolmgr.AcquireError) map[string]string {
	md := map[string]string{
		"pool":    e.Pool,
		"max":     strconv.Itoa(e.Snapshot.Max),
		"total":   strconv.Itoa(e.Snapshot.Total),
		"in_use":  strconv.Itoa(e.Snapshot.InUse),
		"idle":    strconv.Itoa(e.Snapshot.Idle),
		"waiters": strconv.Itoa(e.Snapshot.Waiters),
	}
	if e.LastDialErr != nil {
		md["last_dial_error"] = e.LastDialErr.Error()
	}
	return md
}

// etagOf derives a pool's etag from its revision.
func etagOf(rev int64) string {
	return `"` + strconv.FormatInt(rev, 10) + `"`
}
