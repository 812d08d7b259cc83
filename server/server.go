package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/validator"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/experimental"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/relay"
)

// Keepalive defaults: the server pings an idle connection every
// DefaultKeepaliveTime and closes it, ending its streams, when the ping is
// not answered within DefaultKeepaliveTimeout; so a dead client's lease and
// watch streams end within about 40s.
const (
	DefaultKeepaliveTime    = 30 * time.Second
	DefaultKeepaliveTimeout = 10 * time.Second
	// DefaultKeepaliveMinTime is the shortest client ping interval allowed;
	// clients that ping more often are disconnected (GOAWAY).
	DefaultKeepaliveMinTime = 10 * time.Second
)

// Abuse limits (Config overrides them).
const (
	// DefaultMaxRecvMsgSize bounds one received message: 4 MiB, room for a
	// 1 MiB lease data frame and an ApplyPools of a few thousand pools.
	DefaultMaxRecvMsgSize = 4 << 20
	// DefaultMaxConcurrentStreams bounds the streams of one client
	// connection; the SDK opens one per lease in flight.
	DefaultMaxConcurrentStreams = 1024
	// DefaultMaxStatsWatchers bounds the WatchPoolStats streams of the
	// whole server.
	DefaultMaxStatsWatchers = 64
)

// Config configures New.
type Config struct {
	// Manager is the pool registry the services adapt. Required.
	Manager *poolmgr.Manager
	// Logger receives the RPC log (one line per finished call) and
	// recovered panics. Default slog.Default().
	Logger *slog.Logger
	// Auth, when set, authenticates every call but the process status of
	// grpc.health.v1.Health (see PublicPoolHealth) against its principals (bearer token or mTLS identity) and enforces
	// their roles (methodPermissions in authz.go) and pool patterns.
	Auth *Authenticator
	// AuthFunc, when set instead of Auth, authenticates every call but the
	// process status of grpc.health.v1.Health (go-grpc-middleware's auth
	// interceptor; Health calls it for pool statuses): it
	// returns the context the handler runs with or an error status
	// (Unauthenticated, PermissionDenied). Roles are enforced for a context
	// it gives a Principal (ContextWithPrincipal); a context without one is
	// allowed every method. Setting both Auth and AuthFunc is an error.
	AuthFunc auth.AuthFunc
	// PublicPoolHealth serves the per-pool health statuses ("pool/<id>" on
	// grpc.health.v1.Health Check and Watch) and List, which names every
	// pool, without credentials. By default, with Auth or AuthFunc set,
	// only the process status ("") is open: the rest needs a principal that
	// may read the pool's stats. Without authentication everything is open
	// anyway.
	PublicPoolHealth bool
	// MaxRecvMsgSize bounds a received message; default
	// DefaultMaxRecvMsgSize. It must leave room for a lease data frame
	// (MaxDataFrame).
	MaxRecvMsgSize int
	// MaxConcurrentStreams bounds the streams (calls, leases) open at once
	// on one client connection; default DefaultMaxConcurrentStreams.
	MaxConcurrentStreams uint32
	// MaxStatsWatchers bounds the WatchPoolStats streams served at once;
	// default DefaultMaxStatsWatchers. One more fails with
	// RESOURCE_EXHAUSTED, reason QUOTA_EXCEEDED.
	MaxStatsWatchers int
	// UnaryInterceptors and StreamInterceptors run first, outside logging
	// (the place for metrics, such as go-grpc-prometheus server metrics).
	UnaryInterceptors  []grpc.UnaryServerInterceptor
	StreamInterceptors []grpc.StreamServerInterceptor
	// KeepaliveTime, KeepaliveTimeout and KeepaliveMinTime override the
	// Default* keepalive values when positive (tests shorten them; grpc
	// raises a KeepaliveTime below 1s to 1s).
	KeepaliveTime    time.Duration
	KeepaliveTimeout time.Duration
	KeepaliveMinTime time.Duration
}

// streamWindow and connWindow are the server's fixed HTTP/2 flow-control
// windows, per stream and per connection (the SDK uses the same).
const (
	streamWindow = 1 << 20
	connWindow   = 16 << 20
)

// New builds the gRPC server: it registers PoolAdminService (AdminServer),
// StatsService (StatsServer), LeaseService (LeaseServer), grpc.health.v1.Health
// (see Services for what the owner drives at shutdown)
// and server reflection, behind the interceptor chain
//
//	cfg.*Interceptors (metrics) -> logging -> authentication (if cfg.Auth
//	or cfg.AuthFunc; not for Health) -> audit (unary mutations) ->
//	authorization (methodPermissions) -> revocation (streams, with
//	authentication) -> validation -> recovery
//
// Recovery runs last, next to the handler: a panic becomes codes.Internal
// with a generic message, and the panic value and stack go to the log.
// opts are added after New's own options (TLS credentials, limits). It
// returns an error if cfg.Manager is nil.
func New(cfg Config, opts ...grpc.ServerOption) (*grpc.Server, *Services, error) {
	if cfg.Manager == nil {
		return nil, nil, errors.New("server: Config.Manager is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Auth != nil {
		if cfg.AuthFunc != nil {
			return nil, nil, errors.New("server: set Config.Auth or Config.AuthFunc, not both")
		}
		cfg.AuthFunc = cfg.Auth.Authenticate
	}
	if cfg.MaxRecvMsgSize == 0 {
		cfg.MaxRecvMsgSize = DefaultMaxRecvMsgSize
	}
	if cfg.MaxRecvMsgSize < MaxDataFrame+1024 {
		return nil, nil, fmt.Errorf("server: Config.MaxRecvMsgSize %d leaves no room for a %d-byte lease data frame", cfg.MaxRecvMsgSize, MaxDataFrame)
	}
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if cfg.MaxStatsWatchers <= 0 {
		cfg.MaxStatsWatchers = DefaultMaxStatsWatchers
	}
	unary, stream := interceptorChain(cfg)
	kp := keepalive.ServerParameters{
		Time:    orDefault(cfg.KeepaliveTime, DefaultKeepaliveTime),
		Timeout: orDefault(cfg.KeepaliveTimeout, DefaultKeepaliveTimeout),
	}
	kep := keepalive.EnforcementPolicy{
		MinTime:             orDefault(cfg.KeepaliveMinTime, DefaultKeepaliveMinTime),
		PermitWithoutStream: true,
	}
	all := append([]grpc.ServerOption{
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
		grpc.KeepaliveParams(kp),
		grpc.KeepaliveEnforcementPolicy(kep),
		grpc.MaxRecvMsgSize(cfg.MaxRecvMsgSize),
		grpc.MaxConcurrentStreams(cfg.MaxConcurrentStreams),
		codecOption(), // protobuf, lease data frames by reference (codec.go)
		// Fixed flow-control windows: with gRPC's default dynamic window
		// (BDP estimation) most lease round trips carry an extra PING and
		// window update each way, about a fifth of a small round trip's
		// cost. 1 MiB per stream is far above one lease's frames in flight
		// on a LAN; 16 MiB bounds what one client connection may buffer.
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
		// gRPC reads HTTP/2 DATA frames into buffers of this pool, which
		// does not zero them (codec.go).
		experimental.BufferPool(relay.Buffers),
	}, opts...)
	srv := grpc.NewServer(all...)

	poolv1.RegisterPoolAdminServiceServer(srv, NewAdminServer(cfg.Manager))
	stats := NewStatsServer(cfg.Manager)
	stats.maxWatchers = int64(cfg.MaxStatsWatchers)
	poolv1.RegisterStatsServiceServer(srv, stats)
	svc := &Services{Health: NewHealth(cfg.Manager), Lease: NewLeaseServer(cfg.Manager, cfg.Logger)}
	svc.Health.authFunc, svc.Health.public = cfg.AuthFunc, cfg.PublicPoolHealth
	svc.Lease.reauth = cfg.AuthFunc
	svc.Lease.header = leaseHeader(cfg.MaxConcurrentStreams)
	poolv1.RegisterLeaseServiceServer(srv, svc.Lease)
	healthpb.RegisterHealthServer(srv, svc.Health.Server())
	reflection.Register(srv)
	return srv, svc, nil
}

// Services are the parts of a server its owner drives during shutdown.
type Services struct {
	// Health holds the per-pool serving statuses; run Health.Run in a
	// goroutine and call Health.Shutdown when stopping.
	Health *Health
	// Lease is the lease service; call Lease.Shutdown before
	// grpc.Server.GracefulStop so idle streams end, and Lease.Wait after.
	Lease *LeaseServer
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// interceptorChain returns the unary and stream chains New installs.
func interceptorChain(cfg Config) ([]grpc.UnaryServerInterceptor, []grpc.StreamServerInterceptor) {
	logger := slogLogger(cfg.Logger)
	// FinishCall only: payloads are never logged, since requests carry
	// write-only client keys.
	logOpts := []logging.Option{logging.WithLogOnEvents(logging.FinishCall)}
	recoverOpts := []recovery.Option{recovery.WithRecoveryHandlerContext(recoverHandler(cfg.Logger))}

	unary := append([]grpc.UnaryServerInterceptor(nil), cfg.UnaryInterceptors...)
	stream := append([]grpc.StreamServerInterceptor(nil), cfg.StreamInterceptors...)
	// Routine calls (leases, stats, health checks) log at DEBUG unless
	// they fail (logging.go).
	routineOpts := append(logOpts[:len(logOpts):len(logOpts)], logging.WithLevels(routineLevel))
	unary = append(unary,
		selector.UnaryServerInterceptor(logging.UnaryServerInterceptor(logger, logOpts...), selector.MatchFunc(adminCall)),
		selector.UnaryServerInterceptor(logging.UnaryServerInterceptor(logger, routineOpts...), selector.MatchFunc(routineCall)))
	stream = append(stream,
		selector.StreamServerInterceptor(logging.StreamServerInterceptor(logger, logOpts...), selector.MatchFunc(adminCall)),
		selector.StreamServerInterceptor(logging.StreamServerInterceptor(logger, routineOpts...), selector.MatchFunc(routineCall)))
	if cfg.AuthFunc != nil {
		unary = append(unary, selector.UnaryServerInterceptor(auth.UnaryServerInterceptor(cfg.AuthFunc), selector.MatchFunc(needsAuth)))
		stream = append(stream, selector.StreamServerInterceptor(auth.StreamServerInterceptor(cfg.AuthFunc), selector.MatchFunc(needsAuth)))
	}
	// Audit sits between authentication and authorization, so refused
	// mutations are logged with the principal that tried them.
	unary = append(unary, auditUnary(cfg.Logger), authzUnary)
	stream = append(stream, auditStream(cfg.Logger), authzStream)
	if cfg.AuthFunc != nil {
		// Streams end when an auth file reload revokes their principal
		// (revoke.go).
		stream = append(stream, revocationStream(cfg.AuthFunc))
	}
	// Validation: messages with Validate/ValidateAll methods (protovalidate
	// or PGV generated) are checked here; the handlers' validateXxx
	// functions check the rest.
	unary = append(unary, validator.UnaryServerInterceptor())
	stream = append(stream, validator.StreamServerInterceptor())
	unary = append(unary, recovery.UnaryServerInterceptor(recoverOpts...))
	stream = append(stream, recovery.StreamServerInterceptor(recoverOpts...))
	return unary, stream
}

// needsAuth exempts the health service from the authentication
// interceptor: load balancers and orchestrators probe the process status
// without credentials, and Health authenticates the calls that name pools
// itself (the interceptor cannot see a Watch request's service).
func needsAuth(_ context.Context, c interceptors.CallMeta) bool {
	return c.Service != healthpb.Health_ServiceDesc.ServiceName
}

// recoverHandler logs a recovered panic with its stack and returns a
// generic Internal status: the panic text never reaches the client.
func recoverHandler(l *slog.Logger) recovery.RecoveryHandlerFuncContext {
	return func(ctx context.Context, p any) error {
		l.LogAttrs(ctx, slog.LevelError, "panic in RPC handler",
			slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
		return newStatus(codes.Internal, poolv1.ErrorReason_INTERNAL, "internal error", nil)
	}
}
