// Package engine keeps one pool of warm upstream connections.
//
// Pool hands out connections: Acquire takes an idle one that passes its
// checkout checks or queues FIFO for one; dials are owned by the pool
// (round-robin over resolved addresses, backoff and a circuit); one
// maintenance loop per pool expires, health-checks and refills idle
// connections and re-resolves names; Release puts a connection back only
// when it is clean. Reconfigure, Drain, Pause, Resume and Reconnect change
// a live pool without cutting a lease. One mutex per pool guards its state;
// no I/O happens under it; time comes from Env.
//
// The engine knows nothing of stored records, history, replicas or etcd:
// its owner (package poolmgr's Manager) decides those and calls in, for
// instance SetFence to withdraw a pool's share of a fleet-wide limit.
//
// Errors callers branch on are the Err* sentinels (errors.Is) and the
// *AcquireError and *ValidationError types (errors.As).
package engine
