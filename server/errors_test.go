package server

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"
)

// toStatus maps every core error to its code and reason, wrapped or not,
// with one ErrorInfo and a RetryInfo where the reason promises one.
func TestToStatus(t *testing.T) {
	acq := func(sentinel error) error {
		return fmt.Errorf("lease: %w", &poolmgr.AcquireError{Err: sentinel, Pool: "api", Snapshot: poolmgr.Snapshot{Total: 1, InUse: 1}})
	}
	tests := []struct {
		name   string
		err    error
		code   codes.Code
		reason poolv1.ErrorReason
		retry  time.Duration // 0: no RetryInfo
		md     map[string]string
	}{
		{"fenced acquire", acq(poolmgr.ErrFenced), codes.Unavailable, poolv1.ErrorReason_REPLICA_FENCED, fencedRetryDelay,
			map[string]string{"pool": "api", "max": "0", "total": "1", "in_use": "1"}},
		{"fenced plain", fmt.Errorf("pool api: %w", poolmgr.ErrFenced), codes.Unavailable, poolv1.ErrorReason_REPLICA_FENCED, fencedRetryDelay, nil},
		{"backlog full", acq(poolmgr.ErrExhausted), codes.ResourceExhausted, poolv1.ErrorReason_BACKLOG_FULL, 100 * time.Millisecond, nil},
		{"acquire timeout", acq(poolmgr.ErrAcquireTimeout), codes.DeadlineExceeded, poolv1.ErrorReason_ACQUIRE_TIMEOUT, 0, nil},
		{"circuit open", acq(poolmgr.ErrUnavailable), codes.Unavailable, poolv1.ErrorReason_UPSTREAM_UNAVAILABLE, time.Second, nil},
		{"draining", poolmgr.ErrDraining, codes.FailedPrecondition, poolv1.ErrorReason_POOL_DRAINING, 0, nil},
		{"draining acquire", acq(poolmgr.ErrDraining), codes.FailedPrecondition, poolv1.ErrorReason_POOL_DRAINING, 0,
			map[string]string{"pool": "api", "state": "DRAINING", "in_use": "1", "total": "1"}},
		{"refused at dial", acq(poolmgr.ErrUpstreamNotAllowed), codes.PermissionDenied, poolv1.ErrorReason_UPSTREAM_NOT_ALLOWED, 0,
			map[string]string{"pool": "api", "in_use": "1"}},
		{"closed", poolmgr.ErrPoolClosed, codes.Unavailable, poolv1.ErrorReason_POOL_CLOSED, 0, nil},
		{"not found", fmt.Errorf("pool x: %w", poolmgr.ErrPoolNotFound), codes.NotFound, poolv1.ErrorReason_POOL_NOT_FOUND, 0, nil},
		{"other", errors.New("boom"), codes.Internal, poolv1.ErrorReason_INTERNAL, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, ok := status.FromError(toStatus(tt.err))
			if !ok {
				t.Fatalf("toStatus(%v) is not a status", tt.err)
			}
			if st.Code() != tt.code {
				t.Errorf("code = %v, want %v", st.Code(), tt.code)
			}
			var infos []*errdetails.ErrorInfo
			var retry *errdetails.RetryInfo
			for _, d := range st.Details() {
				switch d := d.(type) {
				case *errdetails.ErrorInfo:
					infos = append(infos, d)
				case *errdetails.RetryInfo:
					retry = d
				}
			}
			if len(infos) != 1 || infos[0].GetReason() != tt.reason.String() || infos[0].GetDomain() != ErrorDomain {
				t.Fatalf("ErrorInfo = %v, want one with reason %v", infos, tt.reason)
			}
			for k, v := range tt.md {
				if got := infos[0].GetMetadata()[k]; got != v {
					t.Errorf("metadata[%q] = %q, want %q", k, got, v)
				}
			}
			switch {
			case tt.retry == 0 && retry != nil:
				t.Errorf("unexpected RetryInfo %v", retry)
			case tt.retry != 0 && (retry == nil || retry.GetRetryDelay().AsDuration() != tt.retry):
				t.Errorf("RetryInfo = %v, want %v", retry, tt.retry)
			}
		})
	}
	if st := status.Convert(toStatus(context.Canceled)); st.Code() != codes.Canceled {
		t.Errorf("context.Canceled: code %v", st.Code())
	}
}
