package poolmgr

import (
	"errors"
	"fmt"

	"github.com/poolplane/poolplane/poolmgr/engine"
)

// Sentinel errors. Callers branch on them with errors.Is; errors that carry
// data (AcquireError, ValidationError, RevisionMismatchError) match them too.
// The engine's sentinels are the engine package's own values, so errors.Is
// matches either name.
var (
	// ErrPoolNotFound: no pool has that ID.
	ErrPoolNotFound = errors.New("pool not found")
	// ErrPoolExists: Create of an ID already in use.
	ErrPoolExists = errors.New("pool already exists")
	// ErrPoolClosed: the pool or the manager was closed (or deleted).
	ErrPoolClosed = engine.ErrPoolClosed
	// ErrExhausted: max_waiters acquirers are already queued (backlog full).
	ErrExhausted = engine.ErrExhausted
	// ErrAcquireTimeout: no connection within acquire_timeout.
	ErrAcquireTimeout = engine.ErrAcquireTimeout
	// ErrUnavailable: the upstream cannot be reached (circuit open, no address).
	ErrUnavailable = engine.ErrUnavailable
	// ErrDraining: the pool is draining and grants no new leases.
	ErrDraining = engine.ErrDraining
	// ErrLeaseNotFound: no active lease has that ID.
	ErrLeaseNotFound = engine.ErrLeaseNotFound
	// ErrRevisionMismatch: an expected revision (etag) did not match.
	ErrRevisionMismatch = errors.New("revision mismatch")
	// ErrInvalidConfig: a Config failed validation; see ValidationError.
	ErrInvalidConfig = engine.ErrInvalidConfig
	// ErrRevisionNotFound: a requested history revision is not retained.
	ErrRevisionNotFound = errors.New("revision not found")
	// ErrCompacted: Watch from a revision older than the retained history.
	ErrCompacted = errors.New("revision compacted")
	// ErrUpstreamNotAllowed: an endpoint, or an address it resolved to, is
	// refused by the UpstreamPolicy (the upstream allowlist).
	ErrUpstreamNotAllowed = engine.ErrUpstreamNotAllowed
	// ErrFenced: the pool's limits are fleet-scoped and this replica is
	// fenced (Replicas.Fenced: it may have lost its registration in the
	// replica set), so its share is 0. Acquires fail at once; another
	// replica can serve them.
	ErrFenced = engine.ErrFenced
	// ErrClientKeyFile: see engine.ErrClientKeyFile.
	ErrClientKeyFile = engine.ErrClientKeyFile
)

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
