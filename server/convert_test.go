package server

import (
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"
)

func fullConfig() poolmgr.Config {
	return poolmgr.Config{
		Endpoints: []string{"a.example:443", "10.0.0.1:443"},
		TLS: poolmgr.TLSConfig{Enabled: true, ServerName: "a.example", CAPEM: "ca",
			ClientCertPEM: "cert", ClientKeyPEM: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
		Limits: poolmgr.Limits{MaxConnections: 9, MinIdle: 1, MaxIdle: 5, MaxWaiters: 7,
			AcquireTimeout: time.Second, DialTimeout: 2 * time.Second, Scope: poolmgr.ScopeFleet},
		Lifecycle: poolmgr.Lifecycle{MaxLifetime: time.Hour, LifetimeJitter: time.Minute, IdleTimeout: time.Minute,
			ValidateAfterIdle: time.Second, MaxLeaseDuration: 10 * time.Minute, TCPKeepAlive: -1},
		HealthCheck: poolmgr.HealthCheck{Kind: poolmgr.HealthHTTP, Interval: time.Second, Timeout: time.Millisecond, HTTPPath: "/h"},
		DNSRefresh:  time.Minute,
		Reuse:       poolmgr.SingleUse,
		IdleOrder:   poolmgr.FIFO,
		// Not a valid config with an HTTP health check: conversions do
		// not validate.
		Protocol:     poolmgr.ProtocolRedis,
		ResetTimeout: 2 * time.Second,
		Redis: poolmgr.RedisSetup{Username: "u", Password: "redis-secret", Database: 3,
			ProtocolVersion: 3, ClientName: "n"},
		Postgres: poolmgr.PostgresSetup{Database: "db", User: "pu", Password: "pg-secret", SSLMode: poolmgr.PostgresSSLVerifyFull,
			CAPEM: "pgca", Params: map[string]string{"application_name": "app"}, ResetQuery: "RESET ALL", CloseOpenTransactions: true},
		Labels:    map[string]string{"k": "v"},
		Listeners: []poolmgr.Listener{{Address: "127.0.0.1:6390"}, {Address: "unix:///run/poolplane/p.sock", Mode: 0o600, Group: "poolplane"}},
	}
}

func TestConfigRoundTripWithoutKey(t *testing.T) {
	cfg := fullConfig()
	p := configToProto(cfg)
	if p.GetTls().GetClientKeyPem() != "" {
		t.Fatal("configToProto returned the key")
	}
	if fp := p.GetTls().GetClientKeyFingerprint(); fp != keyFingerprint(cfg.TLS.ClientKeyPEM) || !strings.HasPrefix(fp, "sha256:") {
		t.Fatalf("fingerprint %q", fp)
	}
	if p.GetRedis().GetPassword() != "" || !p.GetRedis().GetPasswordSet() {
		t.Fatalf("redis = %v: the password returned, or password_set false", p.GetRedis())
	}
	if p.GetPostgres().GetPassword() != "" || !p.GetPostgres().GetPasswordSet() {
		t.Fatalf("postgres = %v: the password returned, or password_set false", p.GetPostgres())
	}
	back, vs := configFromProto(p)
	if len(vs) != 0 {
		t.Fatalf("violations %v", vs)
	}
	want := cfg
	want.TLS.ClientKeyPEM = ""
	want.Redis.Password = ""
	want.Postgres.Password = ""
	if d := want.DiffFields(back); len(d) != 0 {
		t.Fatalf("round trip differs in %v", d)
	}
	// Every enum value survives.
	for _, k := range []poolmgr.HealthCheckKind{poolmgr.HealthNone, poolmgr.HealthTCP, poolmgr.HealthTLS, poolmgr.HealthHTTP, poolmgr.HealthRedisPing} {
		c := poolmgr.Config{HealthCheck: poolmgr.HealthCheck{Kind: k, Interval: time.Second}}
		if got, _ := configFromProto(configToProto(c)); got.HealthCheck.Kind != k {
			t.Fatalf("kind %v -> %v", k, got.HealthCheck.Kind)
		}
	}
	for _, pr := range []poolmgr.Protocol{poolmgr.ProtocolRaw, poolmgr.ProtocolRedis, poolmgr.ProtocolHTTP1, poolmgr.ProtocolPostgres} {
		if got, _ := configFromProto(configToProto(poolmgr.Config{Protocol: pr})); got.Protocol != pr {
			t.Fatalf("protocol %v -> %v", pr, got.Protocol)
		}
	}
	for _, m := range []poolmgr.PostgresSSLMode{poolmgr.PostgresSSLDisable, poolmgr.PostgresSSLRequire, poolmgr.PostgresSSLVerifyFull} {
		c := poolmgr.Config{Postgres: poolmgr.PostgresSetup{Database: "d", SSLMode: m}}
		if got, _ := configFromProto(configToProto(c)); got.Postgres.SSLMode != m {
			t.Fatalf("ssl_mode %v -> %v", m, got.Postgres.SSLMode)
		}
	}
	// A setup read back does not alias the config's params.
	p.GetPostgres().GetParams()["application_name"] = "changed"
	if cfg.Postgres.Params["application_name"] != "app" {
		t.Fatal("configToProto aliased postgres.params")
	}
}

func TestConfigFromProtoViolations(t *testing.T) {
	_, vs := configFromProto(&poolv1.Pool{
		Limits:      &poolv1.Limits{AcquireTimeout: &durationpb.Duration{Seconds: 1, Nanos: -1}},
		HealthCheck: &poolv1.HealthCheck{Kind: 99},
		ReusePolicy: 5,
		IdleOrder:   -1,
		Postgres:    &poolv1.PostgresSetup{SslMode: 9},
	})
	var fields []string
	for _, v := range vs {
		fields = append(fields, v.Field)
	}
	slices.Sort(fields)
	if want := []string{"health_check.kind", "idle_order", "limits.acquire_timeout", "postgres.ssl_mode", "reuse_policy"}; !slices.Equal(fields, want) {
		t.Fatalf("violations %v, want %v", fields, want)
	}
}

func TestPoolToProtoOutputFields(t *testing.T) {
	now := time.Unix(1700000000, 0)
	p := poolToProto(poolmgr.PoolInfo{ID: "x", Config: fullConfig(), State: poolmgr.StateDraining, Generation: 3,
		Revision: 12, CreateTime: now, UpdateTime: now.Add(time.Second)})
	if p.GetName() != "pools/x" || p.GetState() != poolv1.PoolState_POOL_STATE_DRAINING || p.GetGeneration() != 3 ||
		p.GetRevision() != 12 || p.GetEtag() != `"12"` || !p.GetCreateTime().AsTime().Equal(now) {
		t.Fatalf("pool = %v", p)
	}
	b, _ := proto.Marshal(p)
	if strings.Contains(string(b), "PRIVATE KEY") {
		t.Fatal("key on the wire")
	}
	if strings.Contains(string(b), "redis-secret") {
		t.Fatal("Redis password on the wire")
	}
	if strings.Contains(string(b), "pg-secret") {
		t.Fatal("PostgreSQL password on the wire")
	}
}

func TestValidateUpdateMask(t *testing.T) {
	tests := []struct {
		paths   []string
		leaves  []string // some leaves that must be set
		not     []string // leaves that must not be set
		keyImpl bool
		pwImpl  bool
		pgImpl  bool
		bad     bool
	}{
		{paths: nil, leaves: []string{"endpoints", keyPath, passwordPath, pgPasswordPath, "labels"}, keyImpl: true, pwImpl: true, pgImpl: true},
		{paths: []string{"*"}, leaves: writableLeaves, keyImpl: true, pwImpl: true, pgImpl: true},
		{paths: []string{"redis"}, leaves: []string{"redis.username", passwordPath}, not: []string{keyPath}, pwImpl: true},
		{paths: []string{"redis", "redis.password"}, leaves: []string{passwordPath}, pwImpl: false},
		{paths: []string{"redis.database"}, leaves: []string{"redis.database"}, not: []string{passwordPath}},
		{paths: []string{"redis.password_set"}, bad: true},
		{paths: []string{"postgres"}, leaves: []string{"postgres.user", "postgres.params", pgPasswordPath}, not: []string{passwordPath}, pgImpl: true},
		{paths: []string{"postgres", "postgres.password"}, leaves: []string{pgPasswordPath}, pgImpl: false},
		{paths: []string{"postgres.sslMode"}, leaves: []string{"postgres.ssl_mode"}, not: []string{pgPasswordPath}},
		{paths: []string{"postgres.password_set"}, bad: true},
		{paths: []string{"protocol", "reset_timeout"}, leaves: []string{"protocol", "reset_timeout"}},
		{paths: []string{"limits.max_connections"}, leaves: []string{"limits.max_connections"}, not: []string{"limits.min_idle", keyPath}},
		{paths: []string{"limits.maxConnections", "healthCheck.httpPath"}, leaves: []string{"limits.max_connections", "health_check.http_path"}},
		{paths: []string{"limits"}, leaves: []string{"limits.max_connections", "limits.dial_timeout"}, not: []string{"endpoints"}},
		{paths: []string{"tls"}, leaves: []string{"tls.enabled", keyPath}, keyImpl: true},
		{paths: []string{"tls", "tls.client_key_pem"}, leaves: []string{keyPath}, keyImpl: false},
		{paths: []string{"state"}, bad: true},
		{paths: []string{"name"}, bad: true},
		{paths: []string{"etag"}, bad: true},
		{paths: []string{"tls.client_key_fingerprint"}, bad: true},
		{paths: []string{"limits.nope"}, bad: true},
		{paths: []string{"*", "labels"}, bad: true},
		{paths: []string{""}, bad: true},
	}
	for _, tt := range tests {
		m, err := validateUpdateMask(tt.paths)
		if tt.bad {
			if st := toStatus(err); status.Code(st) != codes.InvalidArgument {
				t.Errorf("%v: err %v, want InvalidArgument", tt.paths, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", tt.paths, err)
			continue
		}
		for _, l := range tt.leaves {
			if !m.leaves[l] {
				t.Errorf("%v: leaf %s not set", tt.paths, l)
			}
		}
		for _, l := range tt.not {
			if m.leaves[l] {
				t.Errorf("%v: leaf %s set", tt.paths, l)
			}
		}
		if m.keyImplicit != tt.keyImpl {
			t.Errorf("%v: keyImplicit %v", tt.paths, m.keyImplicit)
		}
		if m.passwordImplicit != tt.pwImpl {
			t.Errorf("%v: passwordImplicit %v", tt.paths, m.passwordImplicit)
		}
		if m.pgPasswordImplicit != tt.pgImpl {
			t.Errorf("%v: pgPasswordImplicit %v", tt.paths, m.pgPasswordImplicit)
		}
	}
}

func TestMergeConfigKeepsKey(t *testing.T) {
	cur := fullConfig()
	all, _ := validateUpdateMask(nil)
	explicit, _ := validateUpdateMask([]string{keyPath})
	only, _ := validateUpdateMask([]string{"limits.max_waiters"})

	readBack := cur
	readBack.TLS.ClientKeyPEM = "" // as a client reads it back
	// That a full replace with the unchanged cert keeps the key is the
	// core's rule now: poolmgr's TestStoredClientKeySurvives checks it.
	newCert := readBack
	newCert.TLS.ClientCertPEM = "other"
	if got := mergeConfig(cur, newCert, all); got.TLS.ClientKeyPEM != "" {
		t.Fatal("a new certificate kept the old key")
	}
	if got := mergeConfig(cur, readBack, explicit); got.TLS.ClientKeyPEM != "" {
		t.Fatal("explicit empty key path did not clear the key")
	}
	// The PostgreSQL password: kept when not masked or masked implicitly
	// (the core decides then), cleared by its explicit path.
	readBack.Postgres.Password = ""
	if got := mergeConfig(cur, readBack, only); got.Postgres.Password != cur.Postgres.Password {
		t.Fatal("a mask of other fields dropped the PostgreSQL password")
	}
	pgExplicit, _ := validateUpdateMask([]string{pgPasswordPath})
	if got := mergeConfig(cur, readBack, pgExplicit); got.Postgres.Password != "" {
		t.Fatal("explicit empty postgres.password did not clear the password")
	}
	src := poolmgr.Config{Limits: poolmgr.Limits{MaxWaiters: 3}}
	got := mergeConfig(cur, src, only)
	want := cur
	want.Limits.MaxWaiters = 3
	if d := want.DiffFields(got); len(d) != 0 {
		t.Fatalf("masked merge differs in %v", d)
	}
	// cur is not aliased.
	got.Endpoints[0] = "changed:1"
	got.Labels["k"] = "changed"
	if cur.Endpoints[0] == "changed:1" || cur.Labels["k"] == "changed" {
		t.Fatal("mergeConfig aliased cur")
	}
}

func TestEveryWritableLeafCopies(t *testing.T) {
	src := fullConfig()
	src.TLS.ClientKeyFile = "/etc/poolplane/client.key" // exclusive with the PEM key in a valid config; copied alone here
	for _, leaf := range writableLeaves {
		var dst poolmgr.Config
		copyLeaf(&dst, &src, leaf)
		if d := (poolmgr.Config{}).DiffFields(dst); len(d) != 1 || d[0] != leaf {
			t.Errorf("copyLeaf(%s) changed %v", leaf, d)
		}
	}
}

func TestSnakePath(t *testing.T) {
	for in, want := range map[string]string{
		"limits.maxConnections": "limits.max_connections",
		"healthCheck.httpPath":  "health_check.http_path",
		"dns_refresh":           "dns_refresh",
		"tls.caPem":             "tls.ca_pem",
	} {
		if got := snakePath(in); got != want {
			t.Errorf("snakePath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPlanToProto(t *testing.T) {
	r := planToProto(poolmgr.Plan{Revision: 9, Actions: []poolmgr.PlannedAction{
		{ID: "b", Action: poolmgr.ActionDelete, Retired: poolmgr.Retired{Idle: 2, Leased: 1}},
		{ID: "a", Action: poolmgr.ActionUpdate, ChangedFields: []string{"endpoints"}},
	}}, true)
	if r.GetRevision() != 9 || len(r.GetChanges()) != 2 || r.GetChanges()[0].GetName() != "pools/a" ||
		r.GetChanges()[1].GetRetiredIdle() != 2 || r.GetChanges()[1].GetRetiredLeased() != 1 ||
		r.GetChanges()[1].GetAction() != poolv1.PoolChange_ACTION_DELETE {
		t.Fatalf("plan = %v", r)
	}
	if planToProto(poolmgr.Plan{Revision: 9}, false).GetRevision() != 0 {
		t.Fatal("unwritten plan has a revision")
	}
}

func TestStatsToProto(t *testing.T) {
	now := time.Unix(1700000000, 0)
	s := statsToProto(poolmgr.Stats{Pool: "p", State: poolmgr.StateActive, Max: 3, InUse: 1, New: 4, CircuitOpen: true,
		Closes:   map[string]uint64{"drain": 2},
		WaitTime: poolmgr.Histogram{Bounds: []time.Duration{time.Millisecond, time.Second}, Counts: []uint64{1, 2, 3}, Sum: 1500 * time.Millisecond, Count: 6},
	}, now)
	if s.GetName() != "pools/p" || s.GetServing() || !s.GetCircuitOpen() || s.GetCreated() != 4 || s.GetCloses()["drain"] != 2 ||
		!slices.Equal(s.GetAcquireWait().GetBounds(), []float64{0.001, 1}) || s.GetAcquireWait().GetSum() != 1.5 {
		t.Fatalf("stats = %v", s)
	}
	serving := []struct {
		name  string
		stats poolmgr.Stats
		want  bool
	}{
		{"active", poolmgr.Stats{State: poolmgr.StateActive, Max: 3}, true},
		{"circuit open", poolmgr.Stats{State: poolmgr.StateActive, Max: 3, CircuitOpen: true}, false},
		{"fenced", poolmgr.Stats{State: poolmgr.StateActive, Fenced: true}, false},
		{"draining", poolmgr.Stats{State: poolmgr.StateDraining, Max: 3}, false},
	}
	for _, tt := range serving {
		s := statsToProto(tt.stats, now)
		if s.GetServing() != tt.want || s.GetFenced() != tt.stats.Fenced {
			t.Errorf("%s: serving %v fenced %v, want %v %v", tt.name, s.GetServing(), s.GetFenced(), tt.want, tt.stats.Fenced)
		}
	}
}
