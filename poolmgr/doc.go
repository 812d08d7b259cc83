// Package poolmgr is poolplane's registry of configured pools.
//
// The Manager (manager.go, record.go, follow.go, fleet.go) validates a
// configuration, commits it to a Store, applies it to the live pool and
// answers, in that order; it keeps the history for rollback, follows a
// shared store for replicas and divides fleet-wide limits, fencing a pool
// through the engine's Pool.SetFence hook when this replica may have lost
// its place in the fleet.
//
// The live pools are package engine's: poolmgr re-exports the engine's
// types and errors under the same names (Pool, Config, Stats, ErrPoolClosed,
// ...), so a caller of the registry needs one import.
//
// poolmgr imports no gRPC and no generated API code: server converts.
// Errors callers branch on are the Err* sentinels (errors.Is) and the
// *AcquireError, *ValidationError and *RevisionMismatchError types
// (errors.As).
package poolmgr
