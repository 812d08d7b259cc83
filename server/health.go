package server

import (
	"context"
	"errors"
	"slices"
	"time"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/poolplane/poolplane/poolmgr"
)

// HealthServicePrefix starts the health service name of each pool:
// "pool/<id>". The empty service name is the process.
const HealthServicePrefix = "pool/"

// Health publishes per-pool health on grpc.health.v1.Health: "pool/<id>"
// is SERVING while the pool can hand out connections (Pool.Serving) and
// NOT_SERVING otherwise (including once deleted); "" is the process,
// SERVING until Shutdown.
//
// Health starts no goroutine: Sync updates every status once, and Run
// (which cmd/poold runs in a goroutine it owns) syncs on a ticker. Sync and
// Run must not run concurrently with each other; Shutdown and Server are
// safe at any time.
type Health struct {
	srv  *health.Server
	core statsCore
	// known are the pool IDs Sync last saw, to mark deleted ones NOT_SERVING.
	// Only Sync touches it.
	known map[string]bool
}

// NewHealth returns a Health over m, with the process SERVING and no pool
// status yet (call Sync).
func NewHealth(m *poolmgr.Manager) *Health {
	h := &Health{srv: health.NewServer(), core: m, known: make(map[string]bool)}
	h.srv.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	return h
}

// Server returns the grpc.health.v1.Health implementation to register.
func (h *Health) Server() *health.Server { return h.srv }

// Sync sets every running pool's status from Pool.Serving, and marks pools
// deleted since the last Sync NOT_SERVING. It returns ctx's error if ctx
// has ended.
func (h *Health) Sync(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ids := h.core.Pools()
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		st := healthpb.HealthCheckResponse_NOT_SERVING
		p, err := h.core.Pool(id)
		if err == nil && p.Serving() {
			st = healthpb.HealthCheckResponse_SERVING
		}
		if err != nil && !errorIsNotFound(err) {
			continue // the Manager is closing
		}
		h.srv.SetServingStatus(HealthServicePrefix+id, st)
		seen[id] = true
	}
	for id := range h.known {
		if !seen[id] {
			h.srv.SetServingStatus(HealthServicePrefix+id, healthpb.HealthCheckResponse_NOT_SERVING)
		}
	}
	h.known = seen
	return nil
}

// Run calls Sync at once and then every interval until ctx ends, and
// returns ctx's error.
func (h *Health) Run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := h.Sync(ctx); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Shutdown sets every status, the process's included, to NOT_SERVING and
// ignores later updates: call it when graceful shutdown starts.
func (h *Health) Shutdown() { h.srv.Shutdown() }

func errorIsNotFound(err error) bool { return errors.Is(err, poolmgr.ErrPoolNotFound) }

func sortStrings(s []string) { slices.Sort(s) }
