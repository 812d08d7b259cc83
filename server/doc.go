// Package server implements poolplane's gRPC services as thin adapters over
// the registry (poolmgr) and the relay: PoolAdminService (admin.go),
// StatsService (stats.go), LeaseService (lease.go: a Lease stream is one
// client side of relay.Lease), and the per-pool gRPC health statuses
// (health.go). It also holds what every call shares: authentication and
// authorization of principals (auth.go, authz.go), the mapping of core
// errors to gRPC statuses with google.rpc details (errors.go, toStatus), the
// conversion between API messages and core types (convert.go), the lease
// codec that moves data frames without copying their bytes (codec.go), and
// the logging rules of the call log (logging.go).
//
// New builds a *grpc.Server with every service registered; cmd/poold adds
// listeners, TLS, signals and shutdown. server never touches the store.
package server
