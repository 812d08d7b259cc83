package server

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"
)

// This file converts between the wire messages and poolmgr's types. The
// client private key and the Redis and PostgreSQL passwords are write-only:
// they go into a poolmgr.Config, and nothing converted back to the wire ever
// carries them; the wire shows the key's fingerprint and whether a password
// is set instead.

// configFromProto converts p's writable fields to a poolmgr.Config. Unset
// (zero) fields stay zero, which the core reads as "default". Output-only
// fields are ignored. It returns every field it cannot convert (a malformed
// duration, an unknown enum value) as a violation, by API path relative to
// the Pool; the core validates ranges.
func configFromProto(p *poolv1.Pool) (poolmgr.Config, []poolmgr.FieldViolation) {
	var (
		cfg poolmgr.Config
		vs  []poolmgr.FieldViolation
	)
	bad := func(field, format string, args ...any) {
		vs = append(vs, poolmgr.FieldViolation{Field: field, Reason: fmt.Sprintf(format, args...)})
	}
	dur := func(field string, d *durationpb.Duration) time.Duration {
		if d == nil {
			return 0
		}
		if err := d.CheckValid(); err != nil {
			bad(field, "invalid duration: %v", err)
			return 0
		}
		return d.AsDuration()
	}
	if p == nil {
		return cfg, nil
	}
	if len(p.GetEndpoints()) > 0 {
		cfg.Endpoints = slices.Clone(p.GetEndpoints())
	}
	if t := p.GetTls(); t != nil {
		cfg.TLS = poolmgr.TLSConfig{
			Enabled:       t.GetEnabled(),
			ServerName:    t.GetServerName(),
			CAPEM:         t.GetCaPem(),
			ClientCertPEM: t.GetClientCertPem(),
			ClientKeyPEM:  t.GetClientKeyPem(),
			ClientKeyFile: t.GetClientKeyFile(),
		}
	}
	if l := p.GetLimits(); l != nil {
		cfg.Limits = poolmgr.Limits{
			MaxConnections: int(l.GetMaxConnections()),
			MinIdle:        int(l.GetMinIdle()),
			MaxIdle:        int(l.GetMaxIdle()),
			MaxWaiters:     int(l.GetMaxWaiters()),
			AcquireTimeout: dur("limits.acquire_timeout", l.GetAcquireTimeout()),
			DialTimeout:    dur("limits.dial_timeout", l.GetDialTimeout()),
			Scope:          scopeFromProto(l.GetScope()),
		}
	}
	if lc := p.GetLifecycle(); lc != nil {
		cfg.Lifecycle = poolmgr.Lifecycle{
			MaxLifetime:       dur("lifecycle.max_lifetime", lc.GetMaxLifetime()),
			LifetimeJitter:    dur("lifecycle.lifetime_jitter", lc.GetLifetimeJitter()),
			IdleTimeout:       dur("lifecycle.idle_timeout", lc.GetIdleTimeout()),
			ValidateAfterIdle: dur("lifecycle.validate_after_idle", lc.GetValidateAfterIdle()),
			MaxLeaseDuration:  dur("lifecycle.max_lease_duration", lc.GetMaxLeaseDuration()),
			TCPKeepAlive:      dur("lifecycle.tcp_keepalive", lc.GetTcpKeepalive()),
		}
	}
	if hc := p.GetHealthCheck(); hc != nil {
		cfg.HealthCheck = poolmgr.HealthCheck{
			Interval: dur("health_check.interval", hc.GetInterval()),
			Timeout:  dur("health_check.timeout", hc.GetTimeout()),
			HTTPPath: hc.GetHttpPath(),
		}
		switch k := hc.GetKind(); k {
		case poolv1.HealthCheckKind_HEALTH_CHECK_KIND_UNSPECIFIED:
			cfg.HealthCheck.Kind = poolmgr.HealthNone
		case poolv1.HealthCheckKind_HEALTH_CHECK_KIND_TCP:
			cfg.HealthCheck.Kind = poolmgr.HealthTCP
		case poolv1.HealthCheckKind_HEALTH_CHECK_KIND_TLS:
			cfg.HealthCheck.Kind = poolmgr.HealthTLS
		case poolv1.HealthCheckKind_HEALTH_CHECK_KIND_HTTP:
			cfg.HealthCheck.Kind = poolmgr.HealthHTTP
		case poolv1.HealthCheckKind_HEALTH_CHECK_KIND_REDIS_PING:
			cfg.HealthCheck.Kind = poolmgr.HealthRedisPing
		default:
			bad("health_check.kind", "unknown kind %d", int32(k))
		}
	}
	cfg.DNSRefresh = dur("dns_refresh", p.GetDnsRefresh())
	switch r := p.GetReusePolicy(); r {
	case poolv1.ReusePolicy_REUSE_POLICY_UNSPECIFIED, poolv1.ReusePolicy_REUSE_POLICY_REUSE:
		cfg.Reuse = poolmgr.Reuse
	case poolv1.ReusePolicy_REUSE_POLICY_SINGLE_USE:
		cfg.Reuse = poolmgr.SingleUse
	default:
		bad("reuse_policy", "unknown policy %d", int32(r))
	}
	switch o := p.GetIdleOrder(); o {
	case poolv1.IdleOrder_IDLE_ORDER_UNSPECIFIED, poolv1.IdleOrder_IDLE_ORDER_LIFO:
		cfg.IdleOrder = poolmgr.LIFO
	case poolv1.IdleOrder_IDLE_ORDER_FIFO:
		cfg.IdleOrder = poolmgr.FIFO
	default:
		bad("idle_order", "unknown order %d", int32(o))
	}
	switch pr := p.GetProtocol(); pr {
	case poolv1.Protocol_PROTOCOL_UNSPECIFIED, poolv1.Protocol_PROTOCOL_RAW:
		cfg.Protocol = poolmgr.ProtocolRaw
	case poolv1.Protocol_PROTOCOL_REDIS:
		cfg.Protocol = poolmgr.ProtocolRedis
	case poolv1.Protocol_PROTOCOL_HTTP1:
		cfg.Protocol = poolmgr.ProtocolHTTP1
	case poolv1.Protocol_PROTOCOL_POSTGRES:
		cfg.Protocol = poolmgr.ProtocolPostgres
	default:
		bad("protocol", "unknown protocol %d", int32(pr))
	}
	cfg.ResetTimeout = dur("reset_timeout", p.GetResetTimeout())
	if r := p.GetRedis(); r != nil {
		cfg.Redis = poolmgr.RedisSetup{
			Username:        r.GetUsername(),
			Password:        r.GetPassword(),
			Database:        int(r.GetDatabase()),
			ProtocolVersion: int(r.GetProtocolVersion()),
			ClientName:      r.GetClientName(),
		}
	}
	if pg := p.GetPostgres(); pg != nil {
		cfg.Postgres = poolmgr.PostgresSetup{
			Database:              pg.GetDatabase(),
			User:                  pg.GetUser(),
			Password:              pg.GetPassword(),
			CAPEM:                 pg.GetCaPem(),
			ResetQuery:            pg.GetResetQuery(),
			CloseOpenTransactions: pg.GetCloseOpenTransactions(),
		}
		if len(pg.GetParams()) > 0 {
			cfg.Postgres.Params = maps.Clone(pg.GetParams())
		}
		switch m := pg.GetSslMode(); m {
		case poolv1.PostgresSSLMode_POSTGRES_SSL_MODE_UNSPECIFIED, poolv1.PostgresSSLMode_POSTGRES_SSL_MODE_DISABLE:
			cfg.Postgres.SSLMode = poolmgr.PostgresSSLDisable
		case poolv1.PostgresSSLMode_POSTGRES_SSL_MODE_REQUIRE:
			cfg.Postgres.SSLMode = poolmgr.PostgresSSLRequire
		case poolv1.PostgresSSLMode_POSTGRES_SSL_MODE_VERIFY_FULL:
			cfg.Postgres.SSLMode = poolmgr.PostgresSSLVerifyFull
		default:
			bad("postgres.ssl_mode", "unknown mode %d", int32(m))
		}
	}
	if len(p.GetLabels()) > 0 {
		cfg.Labels = maps.Clone(p.GetLabels())
	}
	for _, l := range p.GetListeners() {
		cfg.Listeners = append(cfg.Listeners, poolmgr.Listener{Address: l.GetAddress(), Mode: l.GetMode(), Group: l.GetGroup(), TLS: l.GetTls()})
	}
	return cfg, vs
}

// protocolToProto maps a pool's protocol; RAW is PROTOCOL_RAW.
func protocolToProto(p poolmgr.Protocol) poolv1.Protocol {
	switch p {
	case poolmgr.ProtocolRedis:
		return poolv1.Protocol_PROTOCOL_REDIS
	case poolmgr.ProtocolHTTP1:
		return poolv1.Protocol_PROTOCOL_HTTP1
	case poolmgr.ProtocolPostgres:
		return poolv1.Protocol_PROTOCOL_POSTGRES
	}
	return poolv1.Protocol_PROTOCOL_RAW
}

// poolToProto converts a stored pool. The client key and the Redis and
// PostgreSQL passwords are left out; the key's fingerprint and password_set
// are set instead.
func poolToProto(info poolmgr.PoolInfo) *poolv1.Pool {
	p := configToProto(info.Config)
	p.Name = poolName(info.ID)
	p.State = stateToProto(info.State)
	p.Generation = info.Generation
	p.Revision = info.Revision
	if info.Revision > 0 {
		p.Etag = etagOf(info.Revision)
	}
	if !info.CreateTime.IsZero() {
		p.CreateTime = timestamppb.New(info.CreateTime)
	}
	if !info.UpdateTime.IsZero() {
		p.UpdateTime = timestamppb.New(info.UpdateTime)
	}
	return p
}

// configToProto converts a Config's writable fields, without the client key
// or the Redis and PostgreSQL passwords.
func configToProto(c poolmgr.Config) *poolv1.Pool {
	p := &poolv1.Pool{
		Endpoints: slices.Clone(c.Endpoints),
		Limits: &poolv1.Limits{
			MaxConnections: int32(c.Limits.MaxConnections),
			MinIdle:        int32(c.Limits.MinIdle),
			MaxIdle:        int32(c.Limits.MaxIdle),
			MaxWaiters:     int32(c.Limits.MaxWaiters),
			AcquireTimeout: durationpb.New(c.Limits.AcquireTimeout),
			DialTimeout:    durationpb.New(c.Limits.DialTimeout),
			Scope:          scopeToProto(c.Limits.Scope),
		},
		Lifecycle: &poolv1.Lifecycle{
			MaxLifetime:       durationpb.New(c.Lifecycle.MaxLifetime),
			LifetimeJitter:    durationpb.New(c.Lifecycle.LifetimeJitter),
			IdleTimeout:       durationpb.New(c.Lifecycle.IdleTimeout),
			ValidateAfterIdle: durationpb.New(c.Lifecycle.ValidateAfterIdle),
			MaxLeaseDuration:  durationpb.New(c.Lifecycle.MaxLeaseDuration),
			TcpKeepalive:      durationpb.New(c.Lifecycle.TCPKeepAlive),
		},
		DnsRefresh: durationpb.New(c.DNSRefresh),
		Labels:     maps.Clone(c.Labels),
	}
	for _, l := range c.Listeners {
		p.Listeners = append(p.Listeners, &poolv1.Listener{Address: l.Address, Mode: l.Mode, Group: l.Group, Tls: l.TLS})
	}
	if t := c.TLS; t != (poolmgr.TLSConfig{}) {
		p.Tls = &poolv1.UpstreamTLS{
			Enabled:              t.Enabled,
			ServerName:           t.ServerName,
			CaPem:                t.CAPEM,
			ClientCertPem:        t.ClientCertPEM,
			ClientKeyFingerprint: keyFingerprint(t.ClientKeyPEM),
			ClientKeyFile:        t.ClientKeyFile,
			// ClientKeyPem is write-only: never set here.
		}
	}
	if hc := c.HealthCheck; hc != (poolmgr.HealthCheck{}) {
		p.HealthCheck = &poolv1.HealthCheck{
			Kind:     healthKindToProto(hc.Kind),
			Interval: durationpb.New(hc.Interval),
			Timeout:  durationpb.New(hc.Timeout),
			HttpPath: hc.HTTPPath,
		}
	}
	switch c.Reuse {
	case poolmgr.SingleUse:
		p.ReusePolicy = poolv1.ReusePolicy_REUSE_POLICY_SINGLE_USE
	default:
		p.ReusePolicy = poolv1.ReusePolicy_REUSE_POLICY_REUSE
	}
	switch c.IdleOrder {
	case poolmgr.FIFO:
		p.IdleOrder = poolv1.IdleOrder_IDLE_ORDER_FIFO
	default:
		p.IdleOrder = poolv1.IdleOrder_IDLE_ORDER_LIFO
	}
	p.Protocol = protocolToProto(c.Protocol)
	if c.ResetTimeout != 0 {
		p.ResetTimeout = durationpb.New(c.ResetTimeout)
	}
	if r := c.Redis; r != (poolmgr.RedisSetup{}) {
		p.Redis = &poolv1.RedisSetup{
			Username:        r.Username,
			Database:        int32(r.Database),
			ProtocolVersion: int32(r.ProtocolVersion),
			ClientName:      r.ClientName,
			PasswordSet:     r.Password != "",
			// Password is write-only: never set here.
		}
	}
	if pg := c.Postgres; !reflect.ValueOf(pg).IsZero() {
		p.Postgres = &poolv1.PostgresSetup{
			Database:              pg.Database,
			User:                  pg.User,
			SslMode:               postgresSSLModeToProto(pg.SSLMode),
			CaPem:                 pg.CAPEM,
			Params:                maps.Clone(pg.Params),
			ResetQuery:            pg.ResetQuery,
			CloseOpenTransactions: pg.CloseOpenTransactions,
			PasswordSet:           pg.Password != "",
			// Password is write-only: never set here.
		}
	}
	return p
}

// postgresSSLModeToProto maps a POSTGRES pool's SSL mode; DISABLE is
// POSTGRES_SSL_MODE_DISABLE.
func postgresSSLModeToProto(m poolmgr.PostgresSSLMode) poolv1.PostgresSSLMode {
	switch m {
	case poolmgr.PostgresSSLRequire:
		return poolv1.PostgresSSLMode_POSTGRES_SSL_MODE_REQUIRE
	case poolmgr.PostgresSSLVerifyFull:
		return poolv1.PostgresSSLMode_POSTGRES_SSL_MODE_VERIFY_FULL
	}
	return poolv1.PostgresSSLMode_POSTGRES_SSL_MODE_DISABLE
}

// keyFingerprint returns "sha256:<hex>" of the DER bytes of the first PEM
// block of key (of key's bytes if it holds no PEM block), or "" for no key.
func keyFingerprint(key string) string {
	if key == "" {
		return ""
	}
	b := []byte(key)
	if blk, _ := pem.Decode(b); blk != nil {
		b = blk.Bytes
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func healthKindToProto(k poolmgr.HealthCheckKind) poolv1.HealthCheckKind {
	switch k {
	case poolmgr.HealthTCP:
		return poolv1.HealthCheckKind_HEALTH_CHECK_KIND_TCP
	case poolmgr.HealthTLS:
		return poolv1.HealthCheckKind_HEALTH_CHECK_KIND_TLS
	case poolmgr.HealthHTTP:
		return poolv1.HealthCheckKind_HEALTH_CHECK_KIND_HTTP
	case poolmgr.HealthRedisPing:
		return poolv1.HealthCheckKind_HEALTH_CHECK_KIND_REDIS_PING
	}
	return poolv1.HealthCheckKind_HEALTH_CHECK_KIND_UNSPECIFIED
}

func stateToProto(s poolmgr.State) poolv1.PoolState {
	switch s {
	case poolmgr.StateActive:
		return poolv1.PoolState_POOL_STATE_ACTIVE
	case poolmgr.StatePaused:
		return poolv1.PoolState_POOL_STATE_PAUSED
	case poolmgr.StateDraining:
		return poolv1.PoolState_POOL_STATE_DRAINING
	}
	return poolv1.PoolState_POOL_STATE_UNSPECIFIED
}

// revisionToProto converts one history entry of pool id.
func revisionToProto(id string, r poolmgr.Revision) *poolv1.PoolRevision {
	out := &poolv1.PoolRevision{
		Revision: r.Revision,
		Actor:    r.Actor,
		Deleted:  r.Deleted,
	}
	if out.Actor == "" {
		out.Actor = anonymous
	}
	if !r.Time.IsZero() {
		out.Time = timestamppb.New(r.Time)
	}
	if !r.Deleted {
		out.Pool = poolToProto(poolmgr.PoolInfo{ID: id, Config: r.Config, State: r.State, Revision: r.Revision, UpdateTime: r.Time})
	} else {
		out.Pool = &poolv1.Pool{Name: poolName(id), Revision: r.Revision}
	}
	return out
}

// eventToProto converts a Watch event.
func eventToProto(ev poolmgr.PoolEvent) *poolv1.WatchPoolsResponse {
	t := poolv1.WatchPoolsResponse_EVENT_TYPE_PUT
	if ev.Type == poolmgr.EventDelete {
		t = poolv1.WatchPoolsResponse_EVENT_TYPE_DELETE
	}
	return &poolv1.WatchPoolsResponse{Type: t, Pool: poolToProto(ev.Info), Revision: ev.Revision}
}

// planToProto converts an Apply plan. written says whether the apply
// committed anything (the response's revision is 0 otherwise).
func planToProto(plan poolmgr.Plan, written bool) *poolv1.ApplyPoolsResponse {
	out := &poolv1.ApplyPoolsResponse{Changes: make([]*poolv1.PoolChange, 0, len(plan.Actions))}
	if written {
		out.Revision = plan.Revision
	}
	for _, a := range plan.Actions {
		out.Changes = append(out.Changes, &poolv1.PoolChange{
			Name:          poolName(a.ID),
			Action:        actionToProto(a.Action),
			ChangedFields: slices.Clone(a.ChangedFields),
			RetiredIdle:   int32(a.Retired.Idle),
			RetiredLeased: int32(a.Retired.Leased),
		})
	}
	slices.SortStableFunc(out.Changes, func(a, b *poolv1.PoolChange) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func actionToProto(a poolmgr.Action) poolv1.PoolChange_Action {
	switch a {
	case poolmgr.ActionCreate:
		return poolv1.PoolChange_ACTION_CREATE
	case poolmgr.ActionUpdate:
		return poolv1.PoolChange_ACTION_UPDATE
	case poolmgr.ActionDelete:
		return poolv1.PoolChange_ACTION_DELETE
	case poolmgr.ActionUnchanged:
		return poolv1.PoolChange_ACTION_UNCHANGED
	}
	return poolv1.PoolChange_ACTION_UNSPECIFIED
}

// leaseToProto converts an active lease; now gives its held time.
func leaseToProto(l poolmgr.LeaseInfo, now time.Time) *poolv1.LeaseInfo {
	out := &poolv1.LeaseInfo{
		Name:         leaseName(l.Pool, l.ID),
		ClientName:   l.Holder,
		UpstreamAddr: l.UpstreamAddr,
		Generation:   l.Generation,
	}
	if !l.Since.IsZero() {
		out.GrantTime = timestamppb.New(l.Since)
		out.Held = durationpb.New(max(now.Sub(l.Since), 0))
	}
	return out
}

// replicaSetToProto converts a replica set.
func replicaSetToProto(rs poolmgr.ReplicaSet) *poolv1.ListReplicasResponse {
	out := &poolv1.ListReplicasResponse{ReplicaId: rs.Self, Fenced: rs.Fenced}
	for i, id := range rs.Members {
		out.Replicas = append(out.Replicas, &poolv1.Replica{Id: id, Rank: int32(i)})
	}
	return out
}

// statsToProto converts a stats snapshot taken at now.
func statsToProto(s poolmgr.Stats, now time.Time) *poolv1.PoolStats {
	return &poolv1.PoolStats{
		Name:              poolName(s.Pool),
		Time:              timestamppb.New(now),
		State:             stateToProto(s.State),
		Generation:        s.Generation,
		Serving:           s.State == poolmgr.StateActive && !s.CircuitOpen && !s.Fenced,
		CircuitOpen:       s.CircuitOpen,
		Fenced:            s.Fenced,
		Protocol:          protocolToProto(s.Protocol),
		LastDialError:     s.LastDialError,
		MaxConnections:    int32(s.Max),
		MinIdle:           int32(s.MinIdle),
		Total:             int32(s.Total),
		InUse:             int32(s.InUse),
		Idle:              int32(s.Idle),
		Dialing:           int32(s.Dialing),
		Waiters:           int32(s.Waiters),
		Acquires:          s.Acquires,
		Reused:            s.Reused,
		Created:           s.New,
		Waits:             s.Waits,
		Timeouts:          s.Timeouts,
		BacklogRejections: s.BacklogRejections,
		Dials:             s.Dials,
		DialFailures:      s.DialFailures,
		Closes:            maps.Clone(s.Closes),
		BytesIn:           s.BytesIn,
		BytesOut:          s.BytesOut,
		AcquireWait:       histogramToProto(s.WaitTime),
		DialTime:          histogramToProto(s.DialTime),
		HoldTime:          histogramToProto(s.HoldTime),
	}
}

func histogramToProto(h poolmgr.Histogram) *poolv1.Histogram {
	out := &poolv1.Histogram{
		Bounds: make([]float64, len(h.Bounds)),
		Counts: slices.Clone(h.Counts),
		Sum:    h.Sum.Seconds(),
		Count:  h.Count,
	}
	for i, b := range h.Bounds {
		out.Bounds[i] = b.Seconds()
	}
	return out
}

// prefixed returns a *poolmgr.ValidationError with every field prefixed,
// or nil for no violations.
func prefixed(prefix string, vs []poolmgr.FieldViolation) error {
	if len(vs) == 0 {
		return nil
	}
	out := make([]poolmgr.FieldViolation, len(vs))
	for i, v := range vs {
		out[i] = poolmgr.FieldViolation{Field: prefix + v.Field, Reason: v.Reason}
	}
	return &poolmgr.ValidationError{Violations: out}
}

// prefixErr prefixes the fields of a *poolmgr.ValidationError in err (the
// core names them relative to the Pool; requests nest it in "pool."). Other
// errors are returned unchanged.
func prefixErr(prefix string, err error) error {
	var verr *poolmgr.ValidationError
	if !errors.As(err, &verr) {
		return err
	}
	return prefixed(prefix, verr.Violations)
}

// scopeFromProto maps a LimitScope; an unknown value maps to one that
// poolmgr's validation refuses.
func scopeFromProto(s poolv1.LimitScope) poolmgr.LimitScope {
	switch s {
	case poolv1.LimitScope_LIMIT_SCOPE_UNSPECIFIED, poolv1.LimitScope_LIMIT_SCOPE_REPLICA:
		return poolmgr.ScopeReplica
	case poolv1.LimitScope_LIMIT_SCOPE_FLEET:
		return poolmgr.ScopeFleet
	}
	return poolmgr.LimitScope(-1)
}

func scopeToProto(s poolmgr.LimitScope) poolv1.LimitScope {
	if s == poolmgr.ScopeFleet {
		return poolv1.LimitScope_LIMIT_SCOPE_FLEET
	}
	return poolv1.LimitScope_LIMIT_SCOPE_REPLICA
}

// listenersToProto converts a pool's listener statuses.
func listenersToProto(ls []poolmgr.ListenerStatus) []*poolv1.ListenerStatus {
	if len(ls) == 0 {
		return nil
	}
	out := make([]*poolv1.ListenerStatus, len(ls))
	for i, l := range ls {
		out[i] = &poolv1.ListenerStatus{Address: l.Address, BoundAddress: l.Bound, Error: l.Err,
			Accepted: l.Accepted, Refused: l.Refused, Active: int32(l.Active)}
	}
	return out
}
