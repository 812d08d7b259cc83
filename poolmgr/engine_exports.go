package poolmgr

import (
	"time"

	"github.com/poolplane/poolplane/poolmgr/engine"
)

// The engine's types and values under their poolmgr names, so that callers
// of the registry need one import. Each is the engine's own: an alias, or a
// variable holding the same value (errors.Is matches either name).

// Engine types.
type (
	// Pool is engine.Pool.
	Pool = engine.Pool
	// Conn is engine.Conn.
	Conn = engine.Conn
	// Env is engine.Env.
	Env = engine.Env
	// DialFunc is engine.DialFunc.
	DialFunc = engine.DialFunc
	// Resolver is engine.Resolver.
	Resolver = engine.Resolver
	// State is engine.State.
	State = engine.State
	// Stats is engine.Stats.
	Stats = engine.Stats
	// Histogram is engine.Histogram.
	Histogram = engine.Histogram
	// LeaseInfo is engine.LeaseInfo.
	LeaseInfo = engine.LeaseInfo
	// AcquireInfo is engine.AcquireInfo.
	AcquireInfo = engine.AcquireInfo
	// Retired is engine.Retired.
	Retired = engine.Retired
	// CloseReason is engine.CloseReason.
	CloseReason = engine.CloseReason
	// Snapshot is engine.Snapshot.
	Snapshot = engine.Snapshot
	// AcquireError is engine.AcquireError.
	AcquireError = engine.AcquireError
	// Config is engine.Config.
	Config = engine.Config
	// TLSConfig is engine.TLSConfig.
	TLSConfig = engine.TLSConfig
	// Limits is engine.Limits.
	Limits = engine.Limits
	// LimitScope is engine.LimitScope.
	LimitScope = engine.LimitScope
	// Lifecycle is engine.Lifecycle.
	Lifecycle = engine.Lifecycle
	// HealthCheck is engine.HealthCheck.
	HealthCheck = engine.HealthCheck
	// HealthCheckKind is engine.HealthCheckKind.
	HealthCheckKind = engine.HealthCheckKind
	// ReusePolicy is engine.ReusePolicy.
	ReusePolicy = engine.ReusePolicy
	// IdleOrder is engine.IdleOrder.
	IdleOrder = engine.IdleOrder
	// Protocol is engine.Protocol.
	Protocol = engine.Protocol
	// RedisSetup is engine.RedisSetup.
	RedisSetup = engine.RedisSetup
	// PostgresSetup is engine.PostgresSetup.
	PostgresSetup = engine.PostgresSetup
	// PostgresSSLMode is engine.PostgresSSLMode.
	PostgresSSLMode = engine.PostgresSSLMode
	// FieldViolation is engine.FieldViolation.
	FieldViolation = engine.FieldViolation
	// ValidationError is engine.ValidationError.
	ValidationError = engine.ValidationError
	// UpstreamPolicy is engine.UpstreamPolicy.
	UpstreamPolicy = engine.UpstreamPolicy
	// Allowlist is engine.Allowlist.
	Allowlist = engine.Allowlist
	// Listener is engine.Listener.
	Listener = engine.Listener
	// ListenAddr is engine.ListenAddr.
	ListenAddr = engine.ListenAddr
)

// Engine constants.
const (
	StateActive   = engine.StateActive
	StatePaused   = engine.StatePaused
	StateDraining = engine.StateDraining

	Reuse     = engine.Reuse
	SingleUse = engine.SingleUse

	LIFO = engine.LIFO
	FIFO = engine.FIFO

	ProtocolRaw      = engine.ProtocolRaw
	ProtocolRedis    = engine.ProtocolRedis
	ProtocolHTTP1    = engine.ProtocolHTTP1
	ProtocolPostgres = engine.ProtocolPostgres

	PostgresSSLDisable    = engine.PostgresSSLDisable
	PostgresSSLRequire    = engine.PostgresSSLRequire
	PostgresSSLVerifyFull = engine.PostgresSSLVerifyFull

	ScopeReplica = engine.ScopeReplica
	ScopeFleet   = engine.ScopeFleet

	HealthNone      = engine.HealthNone
	HealthTCP       = engine.HealthTCP
	HealthTLS       = engine.HealthTLS
	HealthHTTP      = engine.HealthHTTP
	HealthRedisPing = engine.HealthRedisPing

	CloseIdleTimeout      = engine.CloseIdleTimeout
	CloseMaxLifetime      = engine.CloseMaxLifetime
	CloseUnhealthy        = engine.CloseUnhealthy
	CloseGeneration       = engine.CloseGeneration
	CloseShrink           = engine.CloseShrink
	CloseDirty            = engine.CloseDirty
	CloseRevoked          = engine.CloseRevoked
	CloseDrain            = engine.CloseDrain
	CloseClosed           = engine.CloseClosed
	CloseDNS              = engine.CloseDNS
	CloseSingleUse        = engine.CloseSingleUse
	CloseError            = engine.CloseError
	CloseMaxLeaseDuration = engine.CloseMaxLeaseDuration
	CloseOutstanding      = engine.CloseOutstanding
	CloseResetFailed      = engine.CloseResetFailed
	CloseNotResettable    = engine.CloseNotResettable

	DefaultMaxConnections = engine.DefaultMaxConnections
	DefaultMaxWaiters     = engine.DefaultMaxWaiters
	DefaultAcquireTimeout = engine.DefaultAcquireTimeout
	DefaultDialTimeout    = engine.DefaultDialTimeout
	DefaultMaxLifetime    = engine.DefaultMaxLifetime
	DefaultIdleTimeout    = engine.DefaultIdleTimeout
	DefaultTCPKeepAlive   = engine.DefaultTCPKeepAlive
	DefaultHealthInterval = engine.DefaultHealthInterval
	DefaultHealthTimeout  = engine.DefaultHealthTimeout
	DefaultDNSRefresh     = engine.DefaultDNSRefresh
	DefaultResetTimeout   = engine.DefaultResetTimeout
	DefaultUnixMode       = engine.DefaultUnixMode
	MaxListeners          = engine.MaxListeners

	// AllowAny is engine.AllowAny.
	AllowAny = engine.AllowAny
)

// NewPool starts an engine pool on its own, outside any Manager: see
// engine.NewPool.
func NewPool(name string, cfg Config, env Env) (*Pool, error) { return engine.NewPool(name, cfg, env) }

// NewAllowlist is engine.NewAllowlist.
func NewAllowlist(entries []string) (*Allowlist, error) { return engine.NewAllowlist(entries) }

// ValidatePoolID is engine.ValidatePoolID.
func ValidatePoolID(id string) error { return engine.ValidatePoolID(id) }

// HistogramBounds is engine.HistogramBounds.
func HistogramBounds() []time.Duration { return engine.HistogramBounds() }

// FieldPaths is engine.FieldPaths: the API path of every leaf of a Config.
func FieldPaths() []string { return engine.FieldPaths() }

// ParseListenAddr is engine.ParseListenAddr.
func ParseListenAddr(s string) (ListenAddr, error) { return engine.ParseListenAddr(s) }
