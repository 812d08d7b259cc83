package engine

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/poolplane/poolplane/protocol"
	"github.com/poolplane/poolplane/protocol/http1"
	"github.com/poolplane/poolplane/protocol/postgres"
	"github.com/poolplane/poolplane/protocol/redis"
)

// ReusePolicy says whether a released connection may serve another lease.
type ReusePolicy int

const (
	// Reuse returns a cleanly released connection to the idle set (the default).
	Reuse ReusePolicy = iota
	// SingleUse prewarms connections but closes each one after a single lease,
	// for session-stateful protocols.
	SingleUse
)

func (r ReusePolicy) String() string {
	switch r {
	case Reuse:
		return "REUSE"
	case SingleUse:
		return "SINGLE_USE"
	}
	return "ReusePolicy(" + strconv.Itoa(int(r)) + ")"
}

// IdleOrder is the order in which idle connections are handed out.
type IdleOrder int

const (
	// LIFO hands out the most recently released connection first (the default):
	// it keeps a hot working set and lets the rest expire by idle_timeout.
	LIFO IdleOrder = iota
	// FIFO hands out the connection idle the longest, spreading use evenly.
	FIFO
)

func (o IdleOrder) String() string {
	switch o {
	case LIFO:
		return "LIFO"
	case FIFO:
		return "FIFO"
	}
	return "IdleOrder(" + strconv.Itoa(int(o)) + ")"
}

// HealthCheckKind selects how idle connections are probed.
type HealthCheckKind int

const (
	// HealthNone disables active health checks (the default); checkout still peeks.
	HealthNone HealthCheckKind = iota
	// HealthTCP checks an idle connection with a non-blocking peek for EOF,
	// reset or stray bytes.
	HealthTCP
	// HealthTLS is HealthTCP on a TLS connection (the peek is on the socket).
	HealthTLS
	// HealthHTTP sends "HEAD <path> HTTP/1.1" and expects a 2xx/3xx response.
	HealthHTTP
	// HealthRedisPing sends "PING" and expects "+PONG".
	HealthRedisPing
)

func (k HealthCheckKind) String() string {
	switch k {
	case HealthNone:
		return "NONE"
	case HealthTCP:
		return "TCP"
	case HealthTLS:
		return "TLS"
	case HealthHTTP:
		return "HTTP"
	case HealthRedisPing:
		return "REDIS_PING"
	}
	return "HealthCheckKind(" + strconv.Itoa(int(k)) + ")"
}

// Protocol is what the pool knows of the protocol its connections carry,
// and so when a released connection may serve another lease.
type Protocol int

const (
	// ProtocolRaw has no protocol knowledge (the default). A connection is
	// reused only when the client released it as complete and nothing is
	// pending on it.
	ProtocolRaw Protocol = iota
	// ProtocolRedis follows RESP2/RESP3. The relay follows commands and replies;
	// at release, outstanding replies are discarded and RESET plus the
	// pool's Redis setup run before the connection is idle again.
	ProtocolRedis
	// ProtocolHTTP1 follows HTTP/1.1. A connection is reused only at a message
	// boundary with every response complete; upgrades, CONNECT,
	// close-delimited bodies and "Connection: close" end it.
	ProtocolHTTP1
	// ProtocolPostgres follows the PostgreSQL protocol (session pooling):
	// the pool connects and authenticates with its own credentials,
	// answers each client's startup itself, and at release rolls back what
	// the client left open and runs the reset query.
	ProtocolPostgres
)

func (p Protocol) String() string {
	switch p {
	case ProtocolRaw:
		return "RAW"
	case ProtocolRedis:
		return "REDIS"
	case ProtocolHTTP1:
		return "HTTP1"
	case ProtocolPostgres:
		return "POSTGRES"
	}
	return "Protocol(" + strconv.Itoa(int(p)) + ")"
}

// RedisSetup is the connection setup a REDIS pool runs after every dial and
// every reset, so that clients never hold the upstream's credentials.
// Changing any field bumps the generation.
type RedisSetup struct {
	// Username and Password authenticate (HELLO AUTH); an empty Username
	// with a Password is Redis's "default" user. The password is
	// write-only: sealed at rest, never returned by the API.
	Username string `field:"username"`
	Password string `field:"password"`
	// Database is SELECTed when not 0. Range 0..1048575.
	Database int `field:"database"`
	// ProtocolVersion is the RESP version, 2 or 3 (HELLO's protover).
	// Default 2.
	ProtocolVersion int `field:"protocol_version"`
	// ClientName is set with HELLO's SETNAME: at most 128 printable
	// characters, no spaces.
	ClientName string `field:"client_name"`
}

// PostgresSSLMode is how a POSTGRES pool negotiates TLS with the server
// (an SSLRequest on the connection, as libpq's sslmode).
type PostgresSSLMode int

// SSL modes.
const (
	// PostgresSSLDisable never asks for TLS (the default).
	PostgresSSLDisable PostgresSSLMode = iota
	// PostgresSSLRequire requires TLS without verifying the server.
	PostgresSSLRequire
	// PostgresSSLVerifyFull requires TLS with the server's certificate
	// verified against CAPEM (or the system roots) for the endpoint's host.
	PostgresSSLVerifyFull
)

func (m PostgresSSLMode) String() string {
	switch m {
	case PostgresSSLDisable:
		return "DISABLE"
	case PostgresSSLRequire:
		return "REQUIRE"
	case PostgresSSLVerifyFull:
		return "VERIFY_FULL"
	}
	return "PostgresSSLMode(" + strconv.Itoa(int(m)) + ")"
}

// PostgresSetup is how a POSTGRES pool connects: every connection starts
// with this database, user and startup parameters, authenticated by the
// pool (SCRAM-SHA-256, md5, password or trust), so clients never hold the
// database password. Changing any field but ResetQuery and
// CloseOpenTransactions bumps the generation.
type PostgresSetup struct {
	// Database and User are required.
	Database string `field:"database"`
	User     string `field:"user"`
	// Password is write-only: sealed at rest, never returned by the API.
	Password string          `field:"password"`
	SSLMode  PostgresSSLMode `field:"ssl_mode"`
	// CAPEM verifies the server with SSLMode VERIFY_FULL; empty: the
	// system roots.
	CAPEM string `field:"ca_pem"`
	// Params are startup parameters (application_name, search_path,
	// TimeZone...): at most 32.
	Params map[string]string `field:"params"`
	// ResetQuery runs at every release, after a ROLLBACK of whatever the
	// client left open. Default "DISCARD ALL".
	ResetQuery string `field:"reset_query"`
	// CloseOpenTransactions closes a connection released inside a
	// transaction instead of rolling it back.
	CloseOpenTransactions bool `field:"close_open_transactions"`
}

// TLSConfig configures TLS to the upstream. Changing any field bumps the
// pool's generation: existing connections are retired (idle ones at once,
// leased ones on release).
type TLSConfig struct {
	// Enabled turns TLS on. Minimum version is TLS 1.2.
	Enabled bool `field:"enabled"`
	// ServerName is the name verified in the upstream certificate; default:
	// the host part of the endpoint.
	ServerName string `field:"server_name"`
	// CAPEM holds PEM-encoded roots; empty means the system roots.
	CAPEM string `field:"ca_pem"`
	// ClientCertPEM and ClientKeyPEM are the client certificate and key for
	// mTLS. The key is write-only: the API never returns it, and the
	// Manager stores it encrypted (ManagerConfig.SecretKey).
	ClientCertPEM string `field:"client_cert_pem"`
	ClientKeyPEM  string `field:"client_key_pem"`
	// ClientKeyFile is the absolute path of a PEM file holding the client
	// key, instead of ClientKeyPEM: the key stays out of the store. It is
	// read when the config is validated (dry runs included) and whenever a
	// pool starts or its TLS settings change; to rotate the key in place,
	// write the new file and then change any TLS setting, or the path. Only
	// a regular file of at most 64 KiB is read, within 2s; any failure is
	// ErrClientKeyFile, which tells nothing about the path.
	ClientKeyFile string `field:"client_key_file"`
}

// Limits bound the pool's size and the time callers wait. Changes apply at once.
type Limits struct {
	// MaxConnections is the most connections open at once, idle or leased.
	// Default 10; range 1..100000.
	MaxConnections int `field:"max_connections"`
	// MinIdle connections are kept open and idle (prewarm). Default 0; at most MaxConnections.
	MinIdle int `field:"min_idle"`
	// MaxIdle is the most idle connections kept; extra released ones close.
	// Default: MaxConnections; range MinIdle..MaxConnections.
	MaxIdle int `field:"max_idle"`
	// MaxWaiters is the most acquirers queued; the next fails at once with
	// ErrExhausted. Default 1024; range 0..1000000 (0 means no queueing).
	MaxWaiters int `field:"max_waiters"`
	// AcquireTimeout bounds how long an acquire waits. Default 30s; range 1ms..1h.
	AcquireTimeout time.Duration `field:"acquire_timeout"`
	// DialTimeout bounds a dial including the TLS handshake. Default 5s; range 1ms..5m.
	DialTimeout time.Duration `field:"dial_timeout"`
	// Scope says whether MaxConnections, MinIdle and MaxIdle bound this
	// replica (ScopeReplica, the default) or every replica sharing the
	// store together (ScopeFleet: each takes its share, see
	// ManagerConfig.Replicas).
	Scope LimitScope `field:"scope"`
}

// LimitScope is what Limits bound.
type LimitScope int

// Limit scopes.
const (
	ScopeReplica LimitScope = iota // each replica on its own
	ScopeFleet                     // all replicas together
)

// String returns "replica" or "fleet".
func (s LimitScope) String() string {
	switch s {
	case ScopeReplica:
		return "replica"
	case ScopeFleet:
		return "fleet"
	}
	return fmt.Sprintf("LimitScope(%d)", int(s))
}

// Lifecycle bounds the life of connections and leases. Changes apply at the
// next check (checkout, release or maintenance sweep).
type Lifecycle struct {
	// MaxLifetime closes a connection this long after it was opened, at
	// checkout or in the sweep, never while leased. Default 30m; range 1s..720h.
	MaxLifetime time.Duration `field:"max_lifetime"`
	// LifetimeJitter spreads expiries: each connection's lifetime is reduced
	// by a random amount in [0, LifetimeJitter). Default MaxLifetime/10;
	// range 0..MaxLifetime.
	LifetimeJitter time.Duration `field:"lifetime_jitter"`
	// IdleTimeout closes a connection idle this long. Default 5m; range 1s..720h.
	IdleTimeout time.Duration `field:"idle_timeout"`
	// ValidateAfterIdle: a connection idle longer than this gets a
	// non-blocking peek at checkout. Default 0: every checkout peeks.
	ValidateAfterIdle time.Duration `field:"validate_after_idle"`
	// MaxLeaseDuration revokes a lease held longer. Default 0: unlimited.
	MaxLeaseDuration time.Duration `field:"max_lease_duration"`
	// TCPKeepAlive is the keepalive period on upstream sockets. Default 15s;
	// a negative value disables keepalive.
	TCPKeepAlive time.Duration `field:"tcp_keepalive"`
}

// HealthCheck configures active checks of idle connections.
type HealthCheck struct {
	Kind HealthCheckKind `field:"kind"`
	// Interval between checks of each idle connection. Default 30s when Kind is set; range 100ms..1h.
	Interval time.Duration `field:"interval"`
	// Timeout of one check. Default 2s; range 1ms..Interval.
	Timeout time.Duration `field:"timeout"`
	// HTTPPath for HealthHTTP: the request target of "HEAD <path>
	// HTTP/1.1", an RFC 3986 absolute path with an optional query, at most
	// 2048 bytes. Default "/".
	HTTPPath string `field:"http_path"`
}

// Config is the configuration of one pool. The zero value of a field means
// its default; WithDefaults fills them in, and Validate checks the result.
//
// A new field needs: its Pool field in proto/poolplane/v1/pool.proto; its
// field here, tagged `field:"<api name>"` (DiffFields and FieldPaths read
// the tags); its conversions in server's configFromProto and
// configToProto; its checks in Validate (and default in WithDefaults);
// its place in poolmgr's record. Update masks follow from the Pool
// descriptor. server's TestEveryPoolFieldIsWired and poolmgr's
// TestEveryConfigFieldIsStored name whatever is missing.
type Config struct {
	// Endpoints are "host:port" upstream addresses; names are re-resolved
	// every DNSRefresh. A host is a DNS name or an IP literal (IPv6 in
	// brackets; a zone only on a link-local address), see validateHost.
	// Changing them bumps the generation.
	Endpoints   []string    `field:"endpoints"`
	TLS         TLSConfig   `field:"tls"`
	Limits      Limits      `field:"limits"`
	Lifecycle   Lifecycle   `field:"lifecycle"`
	HealthCheck HealthCheck `field:"health_check"`
	// DNSRefresh is how often names are re-resolved. Default 30s; range 1s..24h.
	DNSRefresh time.Duration `field:"dns_refresh"`
	Reuse      ReusePolicy   `field:"reuse_policy"`
	IdleOrder  IdleOrder     `field:"idle_order"`
	// Protocol decides when a connection may be reused; changing it bumps
	// the generation.
	Protocol Protocol `field:"protocol"`
	// ResetTimeout bounds, at release, reading the replies a client left
	// outstanding and the protocol's reset; a connection not clean by then
	// is closed. Default 1s; range 1ms..1m. Only for a protocol other
	// than RAW.
	ResetTimeout time.Duration `field:"reset_timeout"`
	// Redis is the setup of a REDIS pool.
	Redis RedisSetup `field:"redis"`
	// Postgres is the setup of a POSTGRES pool.
	Postgres PostgresSetup `field:"postgres"`
	// Listeners are the local addresses the pool is served on. No effect
	// on the engine.
	Listeners []Listener `field:"listeners"`
	// Labels are free-form key/value pairs for operators.
	Labels map[string]string `field:"labels"`
}

// Defaults.
const (
	DefaultMaxConnections = 10
	DefaultMaxWaiters     = 1024
	DefaultAcquireTimeout = 30 * time.Second
	DefaultDialTimeout    = 5 * time.Second
	DefaultMaxLifetime    = 30 * time.Minute
	DefaultIdleTimeout    = 5 * time.Minute
	DefaultTCPKeepAlive   = 15 * time.Second
	DefaultHealthInterval = 30 * time.Second
	DefaultHealthTimeout  = 2 * time.Second
	DefaultDNSRefresh     = 30 * time.Second
	DefaultResetTimeout   = time.Second
	// DefaultPostgresResetQuery is PgBouncer's server_reset_query for
	// session pooling.
	DefaultPostgresResetQuery = "DISCARD ALL"
)

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	l := &c.Limits
	if l.MaxConnections == 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	if l.MaxIdle == 0 {
		l.MaxIdle = l.MaxConnections
	}
	if l.MaxWaiters == 0 {
		l.MaxWaiters = DefaultMaxWaiters
	}
	if l.AcquireTimeout == 0 {
		l.AcquireTimeout = DefaultAcquireTimeout
	}
	if l.DialTimeout == 0 {
		l.DialTimeout = DefaultDialTimeout
	}
	lc := &c.Lifecycle
	if lc.MaxLifetime == 0 {
		lc.MaxLifetime = DefaultMaxLifetime
		if lc.LifetimeJitter == 0 {
			lc.LifetimeJitter = lc.MaxLifetime / 10
		}
	}
	if lc.IdleTimeout == 0 {
		lc.IdleTimeout = DefaultIdleTimeout
	}
	if lc.TCPKeepAlive == 0 {
		lc.TCPKeepAlive = DefaultTCPKeepAlive
	}
	if c.HealthCheck.Kind != HealthNone {
		if c.HealthCheck.Interval == 0 {
			c.HealthCheck.Interval = DefaultHealthInterval
		}
		if c.HealthCheck.Timeout == 0 {
			c.HealthCheck.Timeout = DefaultHealthTimeout
		}
		if c.HealthCheck.Kind == HealthHTTP && c.HealthCheck.HTTPPath == "" {
			c.HealthCheck.HTTPPath = "/"
		}
	}
	if c.DNSRefresh == 0 {
		c.DNSRefresh = DefaultDNSRefresh
	}
	if c.Protocol != ProtocolRaw && c.ResetTimeout == 0 {
		c.ResetTimeout = DefaultResetTimeout
	}
	if c.Protocol == ProtocolRedis && c.Redis.ProtocolVersion == 0 {
		c.Redis.ProtocolVersion = 2
	}
	if c.Protocol == ProtocolPostgres && c.Postgres.ResetQuery == "" {
		c.Postgres.ResetQuery = DefaultPostgresResetQuery
	}
	return c
}

// Validate checks a Config after WithDefaults and returns a *ValidationError
// listing every violation, or nil.
func (c Config) Validate() error {
	var vs []FieldViolation
	bad := func(field, format string, args ...any) {
		vs = append(vs, FieldViolation{Field: field, Reason: fmt.Sprintf(format, args...)})
	}
	durRange := func(field string, d, lo, hi time.Duration) {
		if d < lo || d > hi {
			bad(field, "must be between %v and %v, got %v", lo, hi, d)
		}
	}

	if len(c.Endpoints) == 0 {
		bad("endpoints", "at least one endpoint is required")
	}
	if len(c.Endpoints) > 64 {
		bad("endpoints", "at most 64 endpoints, got %d", len(c.Endpoints))
	}
	for i, ep := range c.Endpoints {
		if err := validateEndpoint(ep); err != nil {
			bad(fmt.Sprintf("endpoints[%d]", i), "%v", err)
		}
		if slices.Index(c.Endpoints, ep) != i {
			bad(fmt.Sprintf("endpoints[%d]", i), "duplicate endpoint %q", ep)
		}
	}

	l := c.Limits
	if l.MaxConnections < 1 || l.MaxConnections > 100000 {
		bad("limits.max_connections", "must be between 1 and 100000, got %d", l.MaxConnections)
	}
	if l.MinIdle < 0 || l.MinIdle > l.MaxConnections {
		bad("limits.min_idle", "must be between 0 and max_connections (%d), got %d", l.MaxConnections, l.MinIdle)
	}
	if l.MaxIdle < l.MinIdle || l.MaxIdle > l.MaxConnections {
		bad("limits.max_idle", "must be between min_idle (%d) and max_connections (%d), got %d", l.MinIdle, l.MaxConnections, l.MaxIdle)
	}
	if l.MaxWaiters < 0 || l.MaxWaiters > 1000000 {
		bad("limits.max_waiters", "must be between 0 and 1000000, got %d", l.MaxWaiters)
	}
	durRange("limits.acquire_timeout", l.AcquireTimeout, time.Millisecond, time.Hour)
	durRange("limits.dial_timeout", l.DialTimeout, time.Millisecond, 5*time.Minute)
	if l.Scope != ScopeReplica && l.Scope != ScopeFleet {
		bad("limits.scope", "unknown scope %d", int(l.Scope))
	}

	lc := c.Lifecycle
	durRange("lifecycle.max_lifetime", lc.MaxLifetime, time.Second, 720*time.Hour)
	durRange("lifecycle.lifetime_jitter", lc.LifetimeJitter, 0, lc.MaxLifetime)
	durRange("lifecycle.idle_timeout", lc.IdleTimeout, time.Second, 720*time.Hour)
	durRange("lifecycle.validate_after_idle", lc.ValidateAfterIdle, 0, 720*time.Hour)
	durRange("lifecycle.max_lease_duration", lc.MaxLeaseDuration, 0, 720*time.Hour)
	if lc.TCPKeepAlive > time.Hour {
		bad("lifecycle.tcp_keepalive", "must be at most 1h, got %v", lc.TCPKeepAlive)
	}

	hc := c.HealthCheck
	switch hc.Kind {
	case HealthNone:
	case HealthTCP, HealthTLS, HealthHTTP, HealthRedisPing:
		durRange("health_check.interval", hc.Interval, 100*time.Millisecond, time.Hour)
		durRange("health_check.timeout", hc.Timeout, time.Millisecond, max(hc.Interval, time.Millisecond))
		if hc.Kind == HealthTLS && !c.TLS.Enabled {
			bad("health_check.kind", "TLS health checks need tls.enabled")
		}
		if hc.Kind == HealthHTTP && hc.HTTPPath == "" {
			bad("health_check.http_path", "must start with '/', got %q", hc.HTTPPath)
		}
	default:
		bad("health_check.kind", "unknown kind %d", hc.Kind)
	}
	if hc.HTTPPath != "" {
		if err := validateHTTPPath(hc.HTTPPath); err != nil {
			bad("health_check.http_path", "%v", err)
		}
	}

	durRange("dns_refresh", c.DNSRefresh, time.Second, 24*time.Hour)
	if c.Reuse != Reuse && c.Reuse != SingleUse {
		bad("reuse_policy", "unknown policy %d", c.Reuse)
	}
	if c.IdleOrder != LIFO && c.IdleOrder != FIFO {
		bad("idle_order", "unknown order %d", c.IdleOrder)
	}

	c.validateProtocol(bad, durRange)

	t := c.TLS
	if !t.Enabled && (t.ServerName != "" || t.CAPEM != "" || t.ClientCertPEM != "" || t.ClientKeyPEM != "" || t.ClientKeyFile != "") {
		bad("tls.enabled", "TLS settings are given but tls.enabled is false")
	}
	hasKey := t.ClientKeyPEM != "" || t.ClientKeyFile != ""
	if (t.ClientCertPEM == "") != !hasKey {
		bad("tls.client_cert_pem", "client certificate and key (client_key_pem or client_key_file) must be given together")
	}
	if t.ClientKeyPEM != "" && t.ClientKeyFile != "" {
		bad("tls.client_key_file", "give client_key_pem or client_key_file, not both")
	}
	if t.ClientKeyFile != "" && !filepath.IsAbs(t.ClientKeyFile) {
		bad("tls.client_key_file", "must be an absolute path on the poold host, got %q", t.ClientKeyFile)
	}
	if t.Enabled {
		if err := t.check(); err != nil {
			bad("tls", "%v", err)
		}
	}

	validateListeners(c.Listeners, bad)

	if len(c.Labels) > 64 {
		bad("labels", "at most 64 labels, got %d", len(c.Labels))
	}
	for k, v := range c.Labels {
		if k == "" || len(k) > 63 || len(v) > 256 {
			bad("labels", "label %q: keys are 1-63 characters, values at most 256", k)
		}
	}

	if len(vs) == 0 {
		return nil
	}
	slices.SortStableFunc(vs, func(a, b FieldViolation) int { return strings.Compare(a.Field, b.Field) })
	return &ValidationError{Violations: vs}
}

// validateProtocol checks protocol, reset_timeout and redis.
func (c Config) validateProtocol(bad func(field, format string, args ...any), durRange func(string, time.Duration, time.Duration, time.Duration)) {
	switch c.Protocol {
	case ProtocolRaw:
		if c.ResetTimeout != 0 {
			bad("reset_timeout", "applies only to a protocol other than RAW")
		}
	case ProtocolRedis, ProtocolHTTP1, ProtocolPostgres:
		durRange("reset_timeout", c.ResetTimeout, time.Millisecond, time.Minute)
	default:
		bad("protocol", "unknown protocol %d", c.Protocol)
	}
	switch hk := c.HealthCheck.Kind; {
	case hk == HealthRedisPing && c.Protocol == ProtocolHTTP1:
		bad("health_check.kind", "REDIS_PING on an HTTP1 pool")
	case hk == HealthHTTP && c.Protocol == ProtocolRedis:
		bad("health_check.kind", "HTTP on a REDIS pool")
	case (hk == HealthHTTP || hk == HealthRedisPing) && c.Protocol == ProtocolPostgres:
		bad("health_check.kind", "%v on a POSTGRES pool: TCP or TLS checks run SELECT 1", hk)
	}
	c.validatePostgres(bad)
	r := c.Redis
	if c.Protocol != ProtocolRedis {
		if r != (RedisSetup{}) {
			bad("redis", "applies only to protocol REDIS")
		}
		return
	}
	if r.Username != "" && r.Password == "" {
		bad("redis.password", "a username needs a password")
	}
	for _, f := range []struct{ name, v string }{{"redis.username", r.Username}, {"redis.password", r.Password}} {
		if len(f.v) > 512 || strings.ContainsAny(f.v, "\x00\r\n") {
			bad(f.name, "at most 512 bytes, with no NUL, CR or LF")
		}
	}
	if r.Database < 0 || r.Database > 1<<20-1 {
		bad("redis.database", "must be between 0 and 1048575, got %d", r.Database)
	}
	if r.ProtocolVersion != 2 && r.ProtocolVersion != 3 {
		bad("redis.protocol_version", "must be 2 or 3, got %d", r.ProtocolVersion)
	}
	if len(r.ClientName) > 128 || strings.IndexFunc(r.ClientName, func(c rune) bool { return c <= ' ' || c > '~' }) >= 0 {
		bad("redis.client_name", "at most 128 printable ASCII characters, no spaces, got %q", r.ClientName)
	}
}

// validatePostgres checks postgres.
func (c Config) validatePostgres(bad func(field, format string, args ...any)) {
	pg := c.Postgres
	if c.Protocol != ProtocolPostgres {
		if !reflect.ValueOf(pg).IsZero() {
			bad("postgres", "applies only to protocol POSTGRES")
		}
		return
	}
	if c.TLS.Enabled {
		bad("tls.enabled", "a POSTGRES pool negotiates TLS in the protocol: set postgres.ssl_mode instead")
	}
	for _, f := range []struct{ name, v string }{{"postgres.database", pg.Database}, {"postgres.user", pg.User}} {
		if f.v == "" || len(f.v) > 63 || strings.ContainsRune(f.v, 0) {
			bad(f.name, "required, at most 63 bytes, no NUL")
		}
	}
	if len(pg.Password) > 1024 || strings.ContainsRune(pg.Password, 0) {
		bad("postgres.password", "at most 1024 bytes, no NUL")
	}
	switch pg.SSLMode {
	case PostgresSSLDisable, PostgresSSLRequire:
		if pg.CAPEM != "" {
			bad("postgres.ca_pem", "applies only to ssl_mode VERIFY_FULL")
		}
	case PostgresSSLVerifyFull:
		if pg.CAPEM != "" && !x509.NewCertPool().AppendCertsFromPEM([]byte(pg.CAPEM)) {
			bad("postgres.ca_pem", "holds no PEM certificate")
		}
	default:
		bad("postgres.ssl_mode", "unknown mode %d", pg.SSLMode)
	}
	if len(pg.Params) > 32 {
		bad("postgres.params", "at most 32 parameters, got %d", len(pg.Params))
	}
	for k, v := range pg.Params {
		switch {
		case k == "" || len(k) > 63 || strings.ContainsRune(k, 0) || strings.ContainsRune(v, 0) || len(v) > 1024:
			bad("postgres.params", "parameter %q: names are 1-63 bytes, values at most 1024, no NUL", k)
		case k == "user" || k == "database" || k == "replication" || k == "options":
			bad("postgres.params", "parameter %q is not a session parameter the pool may set", k)
		}
	}
	if len(pg.ResetQuery) > 4096 || strings.ContainsRune(pg.ResetQuery, 0) {
		bad("postgres.reset_query", "at most 4096 bytes, no NUL")
	}
}

// Equal reports whether two configs are the same.
func (c Config) Equal(o Config) bool {
	return len(c.DiffFields(o)) == 0
}

// generationFields are the fields whose change bumps the generation.
func (c Config) sameUpstream(o Config) bool {
	return slices.Equal(c.Endpoints, o.Endpoints) && c.TLS == o.TLS && c.Protocol == o.Protocol && c.Redis == o.Redis &&
		c.Postgres.sameConnection(o.Postgres)
}

// check parses the PEM material.
func (t TLSConfig) check() error {
	_, err := t.clientTLS("")
	return err
}

// clientTLS builds the crypto/tls configuration used to dial upstreams.
// defaultServerName is used when ServerName is empty.
func (t TLSConfig) clientTLS(defaultServerName string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if cfg.ServerName == "" {
		cfg.ServerName = defaultServerName
	}
	if t.CAPEM != "" {
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM([]byte(t.CAPEM)) {
			return nil, errors.New("ca_pem holds no PEM certificate")
		}
		cfg.RootCAs = roots
	}
	if t.ClientCertPEM != "" {
		key := []byte(t.ClientKeyPEM)
		if t.ClientKeyFile != "" {
			// The certificate first, so that its errors never depend on
			// the file; then any failure of the file's key is one error.
			if err := checkCertPEM(t.ClientCertPEM); err != nil {
				return nil, err
			}
			b, err := readKeyFile(t.ClientKeyFile)
			if err != nil {
				return nil, err
			}
			key = b
		}
		cert, err := tls.X509KeyPair([]byte(t.ClientCertPEM), key)
		if err != nil && t.ClientKeyFile != "" {
			// The file was read but holds no key for this certificate:
			// say no more about it than about a missing file.
			return nil, ErrClientKeyFile
		}
		if err != nil {
			// Never wrap err's text with key bytes: X509KeyPair's errors
			// do not quote the key.
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Protocol returns the pool's protocol handler: nil for RAW. Safe for
// concurrent use.
func (p *Pool) Protocol() protocol.Handler {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.handler
}

// newHandler builds cfg.Protocol's handler with cfg's setup; nil for RAW.
func newHandler(cfg Config) protocol.Handler {
	switch cfg.Protocol {
	case ProtocolRedis:
		r := cfg.Redis
		return redis.New(redis.Options{Username: r.Username, Password: r.Password,
			Database: r.Database, ProtocolVersion: r.ProtocolVersion, ClientName: r.ClientName})
	case ProtocolHTTP1:
		return http1.New()
	case ProtocolPostgres:
		p := cfg.Postgres
		mode := postgres.SSLDisable
		switch p.SSLMode {
		case PostgresSSLRequire:
			mode = postgres.SSLRequire
		case PostgresSSLVerifyFull:
			mode = postgres.SSLVerifyFull
		}
		return postgres.New(postgres.Options{Database: p.Database, User: p.User, Password: p.Password,
			SSLMode: mode, CAPEM: p.CAPEM, Params: p.Params, ResetQuery: p.ResetQuery,
			CloseOpenTransactions: p.CloseOpenTransactions})
	}
	return nil
}

// sameConnection reports whether connections made with p and o are alike:
// everything but the reset settings.
func (p PostgresSetup) sameConnection(o PostgresSetup) bool {
	return p.Database == o.Database && p.User == o.User && p.Password == o.Password &&
		p.SSLMode == o.SSLMode && p.CAPEM == o.CAPEM && maps.Equal(p.Params, o.Params)
}
