// Package poolmgr holds poolplane's pools: the engine that keeps one pool's
// warm upstream connections, and the registry of configured pools around it.
//
// The engine (Pool, Conn; pool.go, conn.go, dial.go, maintain.go,
// upstream.go, tlsconfirm.go, stats.go) hands out connections: Acquire takes
// an idle one that passes its checkout checks or queues FIFO for one, dials
// are owned by the pool (round-robin over resolved addresses, backoff and a
// circuit), one maintenance loop per pool expires, health-checks and refills
// idle connections, and Release puts a connection back only when it is clean.
// One mutex per pool guards its state; no I/O happens under it; time comes
// from Env.
//
// The registry (Manager; manager.go, record.go, follow.go, fleet.go)
// validates a configuration, commits it to a Store, applies it to the live
// Pool and answers, in that order; it keeps the history for rollback,
// follows a shared store for replicas and divides fleet-wide limits.
//
// poolmgr imports no gRPC and no generated API code: server converts.
// Errors callers branch on are the Err* sentinels (errors.Is) and the
// *AcquireError and *ValidationError types (errors.As).
package poolmgr
