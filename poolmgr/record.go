package poolmgr

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"time"

	"github.com/poolplane/poolplane/poolmgr/internal/seal"
)

// This file is the persisted form of a pool: poolmgr's own versioned record,
// stored as the value of the key "pools/<id>". It is never a gen/ API
// message. The record is JSON with explicit field names; enums are stored
// by name and durations as integer nanoseconds, so renumbering a Go constant
// or changing a default never changes the meaning of a stored pool.
//
// Compatibility rules: a change a version-1 reader would misread bumps
// recordVersion (and adds a migration in decodeRecord). Decoding refuses
// records of a newer version and, within version 1, unknown fields: this
// build cannot honour what it does not understand.

// recordVersion is the schema version this build writes and the newest it reads.
const recordVersion = 1

// errRecord is wrapped by every record decoding error.
var errRecord = errors.New("poolmgr: bad pool record")

// record is the decoded value of one pool key.
type record struct {
	Config     Config
	State      State
	CreateTime time.Time
	UpdateTime time.Time
	// Op is what wrote this revision (ActionCreate, ...). For
	// ActionReconnect it is the only trace of the reconnect: the generation
	// is not persisted.
	Op Action
}

// Wire shapes. Field names are part of the format: never rename.
type (
	recordJSON struct {
		V          int        `json:"v"`
		State      string     `json:"state"`
		CreateTime time.Time  `json:"create_time"`
		UpdateTime time.Time  `json:"update_time"`
		Op         string     `json:"op,omitempty"`
		Config     configJSON `json:"config"`
	}
	configJSON struct {
		Endpoints   []string      `json:"endpoints"`
		TLS         tlsJSON       `json:"tls"`
		Limits      limitsJSON    `json:"limits"`
		Lifecycle   lifecycleJSON `json:"lifecycle"`
		HealthCheck healthJSON    `json:"health_check"`
		DNSRefresh  int64         `json:"dns_refresh_ns"`
		Reuse       string        `json:"reuse_policy"`
		IdleOrder   string        `json:"idle_order"`
		// Protocol, ResetTimeout, Redis and Postgres are omitted for a RAW
		// pool, so that its record reads back in builds that predate them.
		Protocol     string            `json:"protocol,omitempty"`
		ResetTimeout int64             `json:"reset_timeout_ns,omitempty"`
		Redis        *redisJSON        `json:"redis,omitempty"`
		Postgres     *postgresJSON     `json:"postgres,omitempty"`
		Labels       map[string]string `json:"labels,omitempty"`
		Listeners    []listenerJSON    `json:"listeners,omitempty"`
	}
	listenerJSON struct {
		Address string `json:"address"`
		Mode    uint32 `json:"mode,omitempty"`
		Group   string `json:"group,omitempty"`
		TLS     bool   `json:"tls,omitempty"`
	}
	postgresJSON struct {
		Database string `json:"database,omitempty"`
		User     string `json:"user,omitempty"`
		// PasswordSealed and Password are as in redisJSON, sealed under
		// their own label (pgPasswordAAD).
		PasswordSealed string `json:"password_sealed,omitempty"`
		Password       string `json:"password,omitempty"`
		// SSLMode is omitted for DISABLE.
		SSLMode               string            `json:"ssl_mode,omitempty"`
		CAPEM                 string            `json:"ca_pem,omitempty"`
		Params                map[string]string `json:"params,omitempty"`
		ResetQuery            string            `json:"reset_query,omitempty"`
		CloseOpenTransactions bool              `json:"close_open_transactions,omitempty"`
	}
	redisJSON struct {
		Username string `json:"username,omitempty"`
		// PasswordSealed is the password encrypted with the Manager's
		// secret key, like tlsJSON.ClientKeySealed; Password is the
		// password in clear, written only by a Manager without a secret
		// key (which refuses passwords: only tests do). At most one is
		// set. The API never returns either.
		PasswordSealed  string `json:"password_sealed,omitempty"`
		Password        string `json:"password,omitempty"`
		Database        int    `json:"database,omitempty"`
		ProtocolVersion int    `json:"protocol_version,omitempty"`
		ClientName      string `json:"client_name,omitempty"`
	}
	tlsJSON struct {
		Enabled       bool   `json:"enabled"`
		ServerName    string `json:"server_name,omitempty"`
		CAPEM         string `json:"ca_pem,omitempty"`
		ClientCertPEM string `json:"client_cert_pem,omitempty"`
		// ClientKeySealed is the client key encrypted with the Manager's
		// secret key (seal format "v1."...). ClientKeyPEM is the key in
		// clear, as written before keys were encrypted or by a Manager
		// without a secret key; at most one of them is set. The API never
		// returns either.
		ClientKeySealed string `json:"client_key_sealed,omitempty"`
		ClientKeyPEM    string `json:"client_key_pem,omitempty"`
		// ClientKeyFile is a path to the key, read when dialing.
		ClientKeyFile string `json:"client_key_file,omitempty"`
	}
	limitsJSON struct {
		MaxConnections int    `json:"max_connections"`
		MinIdle        int    `json:"min_idle"`
		MaxIdle        int    `json:"max_idle"`
		MaxWaiters     int    `json:"max_waiters"`
		AcquireTimeout int64  `json:"acquire_timeout_ns"`
		DialTimeout    int64  `json:"dial_timeout_ns"`
		Scope          string `json:"scope,omitempty"` // "" (replica) or "fleet"
	}
	lifecycleJSON struct {
		MaxLifetime       int64 `json:"max_lifetime_ns"`
		LifetimeJitter    int64 `json:"lifetime_jitter_ns"`
		IdleTimeout       int64 `json:"idle_timeout_ns"`
		ValidateAfterIdle int64 `json:"validate_after_idle_ns"`
		MaxLeaseDuration  int64 `json:"max_lease_duration_ns"`
		TCPKeepAlive      int64 `json:"tcp_keepalive_ns"`
	}
	healthJSON struct {
		Kind     string `json:"kind"`
		Interval int64  `json:"interval_ns"`
		Timeout  int64  `json:"timeout_ns"`
		HTTPPath string `json:"http_path,omitempty"`
	}
)

// keyAAD binds sealed client keys to their use; passwordAAD sealed Redis
// passwords to theirs, pgPasswordAAD sealed PostgreSQL passwords to theirs.
var (
	keyAAD        = []byte("poolplane pool record: tls.client_key")
	passwordAAD   = []byte("poolplane pool record: redis.password")
	pgPasswordAAD = []byte("poolplane pool record: postgres.password")
)

// encodeRecord encodes r in the current schema. The client key and the
// Redis and PostgreSQL passwords are sealed with s; without s (no secret
// key) they are stored in clear, which the Manager allows only for keys
// already stored so. It fails only for a Config holding enum values
// outside their declared sets.
func encodeRecord(r record, s *seal.Sealer) ([]byte, error) {
	c := r.Config
	state, err := stateName(r.State)
	if err != nil {
		return nil, err
	}
	reuse, err := enumName(int(c.Reuse), reuseNames, "reuse_policy")
	if err != nil {
		return nil, err
	}
	order, err := enumName(int(c.IdleOrder), idleOrderNames, "idle_order")
	if err != nil {
		return nil, err
	}
	kind, err := enumName(int(c.HealthCheck.Kind), healthKindNames, "health_check.kind")
	if err != nil {
		return nil, err
	}
	proto, err := enumName(int(c.Protocol), protocolNames, "protocol")
	if err != nil {
		return nil, err
	}
	if c.Protocol == ProtocolRaw {
		proto = ""
	}
	j := recordJSON{
		V:          recordVersion,
		State:      state,
		CreateTime: r.CreateTime.UTC(),
		UpdateTime: r.UpdateTime.UTC(),
		Op:         string(r.Op),
		Config: configJSON{
			Endpoints: c.Endpoints,
			TLS: tlsJSON{
				Enabled:       c.TLS.Enabled,
				ServerName:    c.TLS.ServerName,
				CAPEM:         c.TLS.CAPEM,
				ClientCertPEM: c.TLS.ClientCertPEM,
				ClientKeyFile: c.TLS.ClientKeyFile,
			},
			Limits: limitsJSON{
				MaxConnections: c.Limits.MaxConnections,
				MinIdle:        c.Limits.MinIdle,
				MaxIdle:        c.Limits.MaxIdle,
				MaxWaiters:     c.Limits.MaxWaiters,
				AcquireTimeout: int64(c.Limits.AcquireTimeout),
				DialTimeout:    int64(c.Limits.DialTimeout),
				Scope:          scopeName(c.Limits.Scope),
			},
			Lifecycle: lifecycleJSON{
				MaxLifetime:       int64(c.Lifecycle.MaxLifetime),
				LifetimeJitter:    int64(c.Lifecycle.LifetimeJitter),
				IdleTimeout:       int64(c.Lifecycle.IdleTimeout),
				ValidateAfterIdle: int64(c.Lifecycle.ValidateAfterIdle),
				MaxLeaseDuration:  int64(c.Lifecycle.MaxLeaseDuration),
				TCPKeepAlive:      int64(c.Lifecycle.TCPKeepAlive),
			},
			HealthCheck: healthJSON{
				Kind:     kind,
				Interval: int64(c.HealthCheck.Interval),
				Timeout:  int64(c.HealthCheck.Timeout),
				HTTPPath: c.HealthCheck.HTTPPath,
			},
			DNSRefresh:   int64(c.DNSRefresh),
			Reuse:        reuse,
			IdleOrder:    order,
			Protocol:     proto,
			ResetTimeout: int64(c.ResetTimeout),
			Labels:       c.Labels,
		},
	}
	for _, l := range c.Listeners {
		j.Config.Listeners = append(j.Config.Listeners, listenerJSON(l))
	}
	if r := c.Redis; r != (RedisSetup{}) {
		j.Config.Redis = &redisJSON{
			Username:        r.Username,
			Database:        r.Database,
			ProtocolVersion: r.ProtocolVersion,
			ClientName:      r.ClientName,
		}
		if r.Password != "" {
			if s != nil {
				j.Config.Redis.PasswordSealed = s.Seal([]byte(r.Password), passwordAAD)
			} else {
				j.Config.Redis.Password = r.Password
			}
		}
	}
	if j.Config.Postgres, err = postgresToJSON(c.Postgres, s); err != nil {
		return nil, err
	}
	if k := c.TLS.ClientKeyPEM; k != "" {
		if s != nil {
			j.Config.TLS.ClientKeySealed = s.Seal([]byte(k), keyAAD)
		} else {
			j.Config.TLS.ClientKeyPEM = k
		}
	}
	b, err := json.Marshal(j)
	if err != nil {
		return nil, fmt.Errorf("encode pool record: %w", err)
	}
	return b, nil
}

// decodeRecord decodes a stored record, opening a sealed client key and
// sealed Redis and PostgreSQL passwords with s.
// It refuses records written by a newer schema, unknown fields, unknown
// enum names, trailing data, and a sealed key without s or under another
// key, with an error wrapping errRecord. It does not validate the Config:
// callers that start pools validate it.
func decodeRecord(b []byte, s *seal.Sealer) (record, error) {
	var head struct {
		V *int `json:"v"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return record{}, fmt.Errorf("%w: %w", errRecord, err)
	}
	switch {
	case head.V == nil:
		return record{}, fmt.Errorf("%w: no schema version", errRecord)
	case *head.V > recordVersion:
		return record{}, fmt.Errorf("%w: schema version %d is newer than this build supports (%d); upgrade poold", errRecord, *head.V, recordVersion)
	case *head.V < 1:
		return record{}, fmt.Errorf("%w: invalid schema version %d", errRecord, *head.V)
	}

	var j recordJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return record{}, fmt.Errorf("%w: %w", errRecord, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return record{}, fmt.Errorf("%w: trailing data after the record", errRecord)
	}

	var r record
	var err error
	if r.State, err = parseState(j.State); err != nil {
		return record{}, err
	}
	c := j.Config
	reuse, err := parseEnum(c.Reuse, reuseNames, "reuse_policy")
	if err != nil {
		return record{}, err
	}
	order, err := parseEnum(c.IdleOrder, idleOrderNames, "idle_order")
	if err != nil {
		return record{}, err
	}
	kind, err := parseEnum(c.HealthCheck.Kind, healthKindNames, "health_check.kind")
	if err != nil {
		return record{}, err
	}
	proto := int(ProtocolRaw)
	if c.Protocol != "" {
		if proto, err = parseEnum(c.Protocol, protocolNames, "protocol"); err != nil {
			return record{}, err
		}
	}
	r.CreateTime = j.CreateTime.UTC()
	r.UpdateTime = j.UpdateTime.UTC()
	for _, t := range []time.Time{r.CreateTime, r.UpdateTime} {
		if y := t.Year(); y < 0 || y > 9999 {
			return record{}, fmt.Errorf("%w: time %v out of range", errRecord, t)
		}
	}
	r.Op = Action(j.Op)
	r.Config = Config{
		Endpoints: c.Endpoints,
		TLS: TLSConfig{
			Enabled:       c.TLS.Enabled,
			ServerName:    c.TLS.ServerName,
			CAPEM:         c.TLS.CAPEM,
			ClientCertPEM: c.TLS.ClientCertPEM,
			ClientKeyPEM:  c.TLS.ClientKeyPEM,
			ClientKeyFile: c.TLS.ClientKeyFile,
		},
		Limits: Limits{
			MaxConnections: c.Limits.MaxConnections,
			MinIdle:        c.Limits.MinIdle,
			MaxIdle:        c.Limits.MaxIdle,
			MaxWaiters:     c.Limits.MaxWaiters,
			AcquireTimeout: time.Duration(c.Limits.AcquireTimeout),
			DialTimeout:    time.Duration(c.Limits.DialTimeout),
			Scope:          scopeOf(c.Limits.Scope),
		},
		Lifecycle: Lifecycle{
			MaxLifetime:       time.Duration(c.Lifecycle.MaxLifetime),
			LifetimeJitter:    time.Duration(c.Lifecycle.LifetimeJitter),
			IdleTimeout:       time.Duration(c.Lifecycle.IdleTimeout),
			ValidateAfterIdle: time.Duration(c.Lifecycle.ValidateAfterIdle),
			MaxLeaseDuration:  time.Duration(c.Lifecycle.MaxLeaseDuration),
			TCPKeepAlive:      time.Duration(c.Lifecycle.TCPKeepAlive),
		},
		HealthCheck: HealthCheck{
			Kind:     HealthCheckKind(kind),
			Interval: time.Duration(c.HealthCheck.Interval),
			Timeout:  time.Duration(c.HealthCheck.Timeout),
			HTTPPath: c.HealthCheck.HTTPPath,
		},
		DNSRefresh:   time.Duration(c.DNSRefresh),
		Reuse:        ReusePolicy(reuse),
		IdleOrder:    IdleOrder(order),
		Protocol:     Protocol(proto),
		ResetTimeout: time.Duration(c.ResetTimeout),
		Labels:       c.Labels,
	}
	for _, l := range c.Listeners {
		r.Config.Listeners = append(r.Config.Listeners, Listener(l))
	}
	if rj := c.Redis; rj != nil {
		r.Config.Redis = RedisSetup{
			Username:        rj.Username,
			Password:        rj.Password,
			Database:        rj.Database,
			ProtocolVersion: rj.ProtocolVersion,
			ClientName:      rj.ClientName,
		}
		if sealed := rj.PasswordSealed; sealed != "" {
			switch {
			case rj.Password != "":
				return record{}, fmt.Errorf("%w: both a sealed and a clear Redis password", errRecord)
			case s == nil:
				return record{}, fmt.Errorf("%w: the Redis password is encrypted and no secret key is configured (poold --secret-key-file)", errRecord)
			}
			pw, err := s.Open(sealed, passwordAAD)
			if err != nil {
				return record{}, fmt.Errorf("%w: Redis password: %w (is --secret-key-file the key the pool was written with?)", errRecord, err)
			}
			r.Config.Redis.Password = string(pw)
		}
	}
	if r.Config.Postgres, err = postgresFromJSON(c.Postgres, s); err != nil {
		return record{}, err
	}
	if sealed := c.TLS.ClientKeySealed; sealed != "" {
		switch {
		case c.TLS.ClientKeyPEM != "":
			return record{}, fmt.Errorf("%w: both a sealed and a clear client key", errRecord)
		case s == nil:
			return record{}, fmt.Errorf("%w: the client key is encrypted and no secret key is configured (poold --secret-key-file)", errRecord)
		}
		k, err := s.Open(sealed, keyAAD)
		if err != nil {
			return record{}, fmt.Errorf("%w: client key: %w (is --secret-key-file the key the pool was written with?)", errRecord, err)
		}
		r.Config.TLS.ClientKeyPEM = string(k)
	}
	return r, nil
}

// Stored enum names. They are part of the format: never change one.
var (
	reuseNames      = map[int]string{int(Reuse): "REUSE", int(SingleUse): "SINGLE_USE"}
	idleOrderNames  = map[int]string{int(LIFO): "LIFO", int(FIFO): "FIFO"}
	healthKindNames = map[int]string{
		int(HealthNone): "NONE", int(HealthTCP): "TCP", int(HealthTLS): "TLS",
		int(HealthHTTP): "HTTP", int(HealthRedisPing): "REDIS_PING",
	}
	protocolNames = map[int]string{
		int(ProtocolRaw): "RAW", int(ProtocolRedis): "REDIS", int(ProtocolHTTP1): "HTTP1",
		int(ProtocolPostgres): "POSTGRES",
	}
	sslModeNames = map[int]string{
		int(PostgresSSLDisable): "DISABLE", int(PostgresSSLRequire): "REQUIRE", int(PostgresSSLVerifyFull): "VERIFY_FULL",
	}
	stateNames = map[int]string{int(StateActive): "ACTIVE", int(StatePaused): "PAUSED", int(StateDraining): "DRAINING"}
)

// postgresToJSON encodes a POSTGRES setup, nil for none, sealing the
// password with s (in clear without s, as for the Redis password).
func postgresToJSON(pg PostgresSetup, s *seal.Sealer) (*postgresJSON, error) {
	if reflect.ValueOf(pg).IsZero() {
		return nil, nil
	}
	mode, err := enumName(int(pg.SSLMode), sslModeNames, "postgres.ssl_mode")
	if err != nil {
		return nil, err
	}
	if pg.SSLMode == PostgresSSLDisable {
		mode = ""
	}
	j := &postgresJSON{
		Database:              pg.Database,
		User:                  pg.User,
		SSLMode:               mode,
		CAPEM:                 pg.CAPEM,
		Params:                pg.Params,
		ResetQuery:            pg.ResetQuery,
		CloseOpenTransactions: pg.CloseOpenTransactions,
	}
	if pg.Password != "" {
		if s != nil {
			j.PasswordSealed = s.Seal([]byte(pg.Password), pgPasswordAAD)
		} else {
			j.Password = pg.Password
		}
	}
	return j, nil
}

// postgresFromJSON decodes a POSTGRES setup, opening a sealed password with
// s; nil is no setup.
func postgresFromJSON(j *postgresJSON, s *seal.Sealer) (PostgresSetup, error) {
	if j == nil {
		return PostgresSetup{}, nil
	}
	mode := int(PostgresSSLDisable)
	if j.SSLMode != "" {
		var err error
		if mode, err = parseEnum(j.SSLMode, sslModeNames, "postgres.ssl_mode"); err != nil {
			return PostgresSetup{}, err
		}
	}
	pg := PostgresSetup{
		Database:              j.Database,
		User:                  j.User,
		Password:              j.Password,
		SSLMode:               PostgresSSLMode(mode),
		CAPEM:                 j.CAPEM,
		Params:                j.Params,
		ResetQuery:            j.ResetQuery,
		CloseOpenTransactions: j.CloseOpenTransactions,
	}
	if sealed := j.PasswordSealed; sealed != "" {
		switch {
		case j.Password != "":
			return PostgresSetup{}, fmt.Errorf("%w: both a sealed and a clear PostgreSQL password", errRecord)
		case s == nil:
			return PostgresSetup{}, fmt.Errorf("%w: the PostgreSQL password is encrypted and no secret key is configured (poold --secret-key-file)", errRecord)
		}
		pw, err := s.Open(sealed, pgPasswordAAD)
		if err != nil {
			return PostgresSetup{}, fmt.Errorf("%w: PostgreSQL password: %w (is --secret-key-file the key the pool was written with?)", errRecord, err)
		}
		pg.Password = string(pw)
	}
	return pg, nil
}

func enumName(v int, names map[int]string, field string) (string, error) {
	if s, ok := names[v]; ok {
		return s, nil
	}
	return "", fmt.Errorf("encode pool record: %s: unknown value %d", field, v)
}

func parseEnum(s string, names map[int]string, field string) (int, error) {
	for v, n := range names {
		if n == s {
			return v, nil
		}
	}
	return 0, fmt.Errorf("%w: %s: unknown value %q", errRecord, field, s)
}

func stateName(s State) (string, error) { return enumName(int(s), stateNames, "state") }

func parseState(s string) (State, error) {
	v, err := parseEnum(s, stateNames, "state")
	return State(v), err
}

// scopeName and scopeOf map a LimitScope to its record form; the replica
// scope is omitted so records written before scopes existed read back
// unchanged.
func scopeName(s LimitScope) string {
	if s == ScopeFleet {
		return "fleet"
	}
	return ""
}

func scopeOf(name string) LimitScope {
	if name == "fleet" {
		return ScopeFleet
	}
	return ScopeReplica
}
