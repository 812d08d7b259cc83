package engine

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors of the engine. Callers branch on them with errors.Is;
// errors that carry data (AcquireError, ValidationError) match them too.
var (
	// ErrPoolClosed: the pool was closed.
	ErrPoolClosed = errors.New("pool closed")
	// ErrExhausted: max_waiters acquirers are already queued (backlog full).
	ErrExhausted = errors.New("pool backlog full")
	// ErrAcquireTimeout: no connection within acquire_timeout.
	ErrAcquireTimeout = errors.New("acquire timeout")
	// ErrUnavailable: the upstream cannot be reached (circuit open, no address).
	ErrUnavailable = errors.New("upstream unavailable")
	// ErrDraining: the pool is draining and grants no new leases.
	ErrDraining = errors.New("pool draining")
	// ErrLeaseNotFound: no active lease has that ID.
	ErrLeaseNotFound = errors.New("lease not found")
	// ErrInvalidConfig: a Config failed validation; see ValidationError.
	ErrInvalidConfig = errors.New("invalid pool config")
	// ErrUpstreamNotAllowed: an endpoint, or an address it resolved to, is
	// refused by the UpstreamPolicy (the upstream allowlist).
	ErrUpstreamNotAllowed = errors.New("upstream not allowed")
	// ErrFenced: the pool's owner fenced it (Pool.SetFence): it holds no
	// share of its limit, so acquires fail at once; another replica can
	// serve them.
	ErrFenced = errors.New("replica fenced: no share of the fleet limit")
)

// Snapshot is the state of a pool at the moment an acquire failed.
type Snapshot struct {
	Max, Total, InUse, Idle, Waiters int
}

// AcquireError is returned by Acquire for ErrExhausted, ErrAcquireTimeout,
// ErrUnavailable, ErrUpstreamNotAllowed (the upstream policy refused the
// dial; LastDialErr says which address), ErrDraining and ErrFenced, with
// the pool's state and the last dial error (HikariCP style).
type AcquireError struct {
	Err         error // one of the sentinels above
	Pool        string
	Snapshot    Snapshot
	LastDialErr error         // nil if the last dial succeeded
	RetryAfter  time.Duration // for ErrUnavailable: when the circuit next probes
}

func (e *AcquireError) Error() string {
	s := fmt.Sprintf("pool %s: %v (max=%d total=%d in_use=%d idle=%d waiters=%d)",
		e.Pool, e.Err, e.Snapshot.Max, e.Snapshot.Total, e.Snapshot.InUse, e.Snapshot.Idle, e.Snapshot.Waiters)
	if e.LastDialErr != nil {
		s += ": last dial error: " + e.LastDialErr.Error()
	}
	return s
}

// Unwrap returns the sentinel.
func (e *AcquireError) Unwrap() error { return e.Err }
