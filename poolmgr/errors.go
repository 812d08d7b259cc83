package poolmgr

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Callers branch on them with errors.Is; errors that carry
// data (AcquireError, ValidationError, RevisionMismatchError) match them too.
var (
	// ErrPoolNotFound: no pool has that ID.
	ErrPoolNotFound = errors.New("pool not found")
	// ErrPoolExists: Create of an ID already in use.
	ErrPoolExists = errors.New("pool already exists")
	// ErrPoolClosed: the pool or the manager was closed (or deleted).
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
	// ErrRevisionMismatch: an expected revision (etag) did not match.
	ErrRevisionMismatch = errors.New("revision mismatch")
	// ErrInvalidConfig: a Config failed validation; see ValidationError.
	ErrInvalidConfig = errors.New("invalid pool config")
	// ErrRevisionNotFound: a requested history revision is not retained.
	ErrRevisionNotFound = errors.New("revision not found")
	// ErrCompacted: Watch from a revision older than the retained history.
	ErrCompacted = errors.New("revision compacted")
	// ErrUpstreamNotAllowed: an endpoint, or an address it resolved to, is
	// refused by the UpstreamPolicy (the upstream allowlist).
	ErrUpstreamNotAllowed = errors.New("upstream not allowed")
	// ErrFenced: the pool's limits are fleet-scoped and this replica is
	// fenced (Replicas.Fenced: it may have lost its registration in the
	// replica set), so its share is 0. Acquires fail at once; another
	// replica can serve them.
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

// RevisionMismatchError reports an expected revision that did not match.
type RevisionMismatchError struct {
	Pool              string
	Expected, Current int64
}

func (e *RevisionMismatchError) Error() string {
	return fmt.Sprintf("pool %s: expected revision %d, current %d", e.Pool, e.Expected, e.Current)
}

// Is reports whether target is ErrRevisionMismatch.
func (e *RevisionMismatchError) Is(target error) bool { return target == ErrRevisionMismatch }
