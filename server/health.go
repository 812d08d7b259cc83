package server

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/poolplane/poolplane/poolmgr"
)

// HealthServicePrefix starts the health service name of each pool:
// "pool/<id>". The empty service name is the process.
const HealthServicePrefix = "pool/"

// maxHealthList bounds the statuses one List returns, as grpc-go's health
// server does: beyond it List fails with RESOURCE_EXHAUSTED.
const maxHealthList = 100

// Health implements grpc.health.v1.Health: "" is the process, SERVING
// until Shutdown; "pool/<id>" is SERVING while the pool can hand out
// connections (Pool.Serving) and NOT_SERVING otherwise. Pool statuses are
// read from the registry when asked, so a deleted pool is unknown at once
// (Check: NOT_FOUND; Watch: SERVICE_UNKNOWN) and nothing is kept of it.
//
// The process status is open to every caller (load balancers and
// orchestrators probe it without credentials). Pool statuses and List name
// pools: with authentication on (Config.Auth or Config.AuthFunc) they need
// credentials, of a principal that may read the pool's stats (List shows
// the pools it may), unless Config.PublicPoolHealth opens them.
//
// Health starts no goroutine: Watch streams re-read their status at every
// Sync, and Run (which cmd/poold runs in a goroutine it owns) syncs on a
// ticker. Every method is safe for concurrent use.
type Health struct {
	healthpb.UnimplementedHealthServer

	core    statsCore
	process *health.Server // the "" status only
	down    atomic.Bool    // Shutdown was called
	// tick is closed and replaced at every Sync: Watch streams wait on it.
	tick atomic.Pointer[chan struct{}]

	authFunc auth.AuthFunc // nil: no authentication
	public   bool          // pool statuses and List need no credentials
}

var _ healthpb.HealthServer = (*Health)(nil)

// NewHealth returns a Health over m, with the process SERVING. Pool
// statuses need no credentials (server.New configures authentication).
func NewHealth(m *poolmgr.Manager) *Health {
	return newHealth(m)
}

func newHealth(core statsCore) *Health {
	h := &Health{core: core, process: health.NewServer()}
	tick := make(chan struct{})
	h.tick.Store(&tick)
	return h
}

// Server returns the grpc.health.v1.Health implementation to register: h.
func (h *Health) Server() healthpb.HealthServer { return h }

// Sync wakes every Watch stream to re-read its status. It returns ctx's
// error if ctx has ended.
func (h *Health) Sync(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	next := make(chan struct{})
	close(*h.tick.Swap(&next))
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

// Shutdown sets every status, the process's included, to NOT_SERVING for
// good: call it when graceful shutdown starts.
func (h *Health) Shutdown() {
	h.down.Store(true)
	h.process.Shutdown()
	next := make(chan struct{})
	close(*h.tick.Swap(&next))
}

// Check implements healthpb.HealthServer.
func (h *Health) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	svc := req.GetService()
	if svc == "" {
		return h.process.Check(ctx, req)
	}
	if err := h.authorize(ctx, svc); err != nil {
		return nil, err
	}
	st := h.status(svc)
	if st == healthpb.HealthCheckResponse_SERVICE_UNKNOWN {
		return nil, status.Error(codes.NotFound, "unknown service")
	}
	return &healthpb.HealthCheckResponse{Status: st}, nil
}

// List implements healthpb.HealthServer: the process and every running
// pool the caller may read.
func (h *Health) List(ctx context.Context, _ *healthpb.HealthListRequest) (*healthpb.HealthListResponse, error) {
	p, err := h.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]*healthpb.HealthCheckResponse{"": {Status: h.processStatus()}}
	ids := h.core.Pools()
	slices.Sort(ids)
	for _, id := range ids {
		if p != nil && (!roleAllows(p.Role, permStats) || !p.allowsPool(id)) {
			continue
		}
		if st := h.status(HealthServicePrefix + id); st != healthpb.HealthCheckResponse_SERVICE_UNKNOWN {
			out[HealthServicePrefix+id] = &healthpb.HealthCheckResponse{Status: st}
		}
		if len(out) > maxHealthList {
			return nil, status.Errorf(codes.ResourceExhausted, "server health list exceeds maximum capacity: %d", maxHealthList)
		}
	}
	return &healthpb.HealthListResponse{Statuses: out}, nil
}

// Watch implements healthpb.HealthServer: it sends the status at once and
// then each change seen at a Sync, until the stream ends. An unknown or
// deleted pool is SERVICE_UNKNOWN, and the stream stays open.
func (h *Health) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	svc := req.GetService()
	if svc == "" {
		return h.process.Watch(req, stream)
	}
	ctx := stream.Context()
	if err := h.authorize(ctx, svc); err != nil {
		return err
	}
	last := healthpb.HealthCheckResponse_ServingStatus(-1)
	for {
		tick := h.tick.Load() // before the read: a Sync after it wakes this loop
		if st := h.status(svc); st != last {
			if err := stream.Send(&healthpb.HealthCheckResponse{Status: st}); err != nil {
				return status.Error(codes.Canceled, "stream has ended")
			}
			last = st
		}
		select {
		case <-ctx.Done():
			return status.Error(codes.Canceled, "stream has ended")
		case <-*tick:
		}
	}
}

// status is the status of a service other than "": SERVICE_UNKNOWN for a
// name that is no running pool.
func (h *Health) status(svc string) healthpb.HealthCheckResponse_ServingStatus {
	id, ok := strings.CutPrefix(svc, HealthServicePrefix)
	if !ok {
		return healthpb.HealthCheckResponse_SERVICE_UNKNOWN
	}
	p, err := h.core.Pool(id)
	switch {
	case errorIsNotFound(err):
		return healthpb.HealthCheckResponse_SERVICE_UNKNOWN
	case err != nil || h.down.Load() || !p.Serving():
		return healthpb.HealthCheckResponse_NOT_SERVING
	}
	return healthpb.HealthCheckResponse_SERVING
}

func (h *Health) processStatus() healthpb.HealthCheckResponse_ServingStatus {
	if h.down.Load() {
		return healthpb.HealthCheckResponse_NOT_SERVING
	}
	return healthpb.HealthCheckResponse_SERVING
}

// authenticate runs the server's authentication for a call that names
// pools, unless they are public: it returns the principal (nil when
// authentication is off, public, or a custom AuthFunc stored none).
func (h *Health) authenticate(ctx context.Context) (*Principal, error) {
	if h.authFunc == nil || h.public {
		return nil, nil
	}
	actx, err := h.authFunc(ctx)
	if err != nil {
		return nil, err
	}
	return PrincipalFromContext(actx), nil
}

// authorize lets a caller read the status of svc: a principal that may
// read the stats of the pool it names.
func (h *Health) authorize(ctx context.Context, svc string) error {
	p, err := h.authenticate(ctx)
	if err != nil || p == nil {
		return err
	}
	if !roleAllows(p.Role, permStats) {
		return permissionDenied(p, "role "+string(p.Role)+" may not read pool health", nil)
	}
	if id, ok := strings.CutPrefix(svc, HealthServicePrefix); ok {
		return checkPoolOf(p, id)
	}
	return nil
}

func errorIsNotFound(err error) bool { return errors.Is(err, poolmgr.ErrPoolNotFound) }

func sortStrings(s []string) { slices.Sort(s) }
