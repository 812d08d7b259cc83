package server

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"

	"github.com/poolplane/poolplane/internal/testkit"
)

func TestUpstreamNotAllowedStatus(t *testing.T) {
	allow, err := poolmgr.NewAllowlist([]string{"127.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	e := startEnv(t, nil, nil, nil, func(c *poolmgr.ManagerConfig) { c.Env.Upstreams = allow })
	admin := poolv1.NewPoolAdminServiceClient(e.dial(t, nil))
	ctx := context.Background()
	_, err = admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "x", Pool: &poolv1.Pool{Endpoints: []string{"10.0.0.1:80"}}})
	if status.Code(err) != codes.PermissionDenied || reasonOf(err) != "UPSTREAM_NOT_ALLOWED" {
		t.Fatalf("create outside the allowlist: %v", err)
	}
	_, err = admin.ApplyPools(ctx, &poolv1.ApplyPoolsRequest{Pools: []*poolv1.Pool{{Name: "pools/y", Endpoints: []string{"169.254.169.254:80"}}}})
	if status.Code(err) != codes.PermissionDenied || reasonOf(err) != "UPSTREAM_NOT_ALLOWED" {
		t.Fatalf("apply of the metadata address: %v", err)
	}
	if _, err := admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "ok", Pool: &poolv1.Pool{Endpoints: []string{e.echo.addr()}}}); err != nil {
		t.Fatal(err)
	}
}

func TestInlineKeyRefusedWithoutSecretKey(t *testing.T) {
	ca := testkit.NewCA(t)
	c := ca.Client(t, "c")
	certPEM, keyPEM := c.CertPEM, c.KeyPEM
	e := startEnv(t, nil, nil, nil, nil)
	admin := poolv1.NewPoolAdminServiceClient(e.dial(t, nil))
	ctx := context.Background()
	tlsOf := func(key, file string) *poolv1.UpstreamTLS {
		return &poolv1.UpstreamTLS{Enabled: true, ClientCertPem: string(certPEM), ClientKeyPem: key, ClientKeyFile: file}
	}
	_, err := admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "x", Pool: &poolv1.Pool{Endpoints: []string{e.echo.addr()}, Tls: tlsOf(string(keyPEM), "")}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "pool.tls.client_key_pem") || !strings.Contains(err.Error(), "secret-key-file") {
		t.Fatalf("inline key without --secret-key-file: %v", err)
	}
	keyFile := filepath.Join(t.TempDir(), "c.key")
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "x", Pool: &poolv1.Pool{Endpoints: []string{e.echo.addr()}, Tls: tlsOf("", keyFile)}})
	if err != nil {
		t.Fatal(err)
	}
	if p.GetTls().GetClientKeyFile() != keyFile || p.GetTls().GetClientKeyFingerprint() != "" || p.GetTls().GetClientKeyPem() != "" {
		t.Fatalf("tls = %v", p.GetTls())
	}
	// A read-back pool applies unchanged, and switching the file keeps no
	// stale inline key.
	plan, err := admin.ApplyPools(ctx, &poolv1.ApplyPoolsRequest{Pools: []*poolv1.Pool{p}})
	if err != nil || plan.GetChanges()[0].GetAction() != poolv1.PoolChange_ACTION_UNCHANGED {
		t.Fatalf("apply read-back: %v %v", plan, err)
	}
	_, err = admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{Pool: &poolv1.Pool{Name: "pools/x", Tls: tlsOf("", "relative.key")},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"tls.client_key_file"}}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "absolute") {
		t.Fatalf("relative key file: %v", err)
	}
}

// TestSecretsNeverLeak drives every write path with an inline key, with
// authentication, auditing and debug logging on, and checks that no
// response, history entry, watch event, error or log line carries it.
func TestSecretsNeverLeak(t *testing.T) {
	ca := testkit.NewCA(t)
	c := ca.Client(t, "c")
	certPEM, keyPEM := c.CertPEM, c.KeyPEM
	otherKey := ca.Client(t, "d").KeyPEM
	e := startEnv(t, rolePrincipals(), nil, nil, func(c *poolmgr.ManagerConfig) { c.SecretKey = bytes.Repeat([]byte{9}, 32) })
	cc := e.dial(t, nil)
	admin := poolv1.NewPoolAdminServiceClient(cc)
	ctx := bearer(context.Background(), "tok-admin")
	watch, err := admin.WatchPools(ctx, &poolv1.WatchPoolsRequest{StartRevision: 0})
	if err != nil {
		t.Fatal(err)
	}
	var seen []proto.Message
	var errs []error
	keep := func(m proto.Message, err error) {
		if err != nil {
			errs = append(errs, err)
			return
		}
		seen = append(seen, m)
	}
	pool := func(key string) *poolv1.Pool {
		return &poolv1.Pool{Endpoints: []string{e.echo.addr()}, Tls: &poolv1.UpstreamTLS{Enabled: true, ClientCertPem: string(certPEM), ClientKeyPem: key}}
	}
	keep(admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "s", Pool: pool(string(keyPEM))}))
	keep(admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "mismatch", Pool: pool(string(otherKey))})) // key does not match the cert
	keep(admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "garbage", Pool: pool("-----BEGIN PRIVATE KEY-----\n" + string(keyPEM[28:60]) + "\n-----END PRIVATE KEY-----\n")}))
	up := pool(string(keyPEM))
	up.Name = "pools/s"
	up.Limits = &poolv1.Limits{MaxConnections: 3}
	keep(admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{Pool: up}))
	up2 := pool(string(keyPEM))
	up2.Name = "pools/s2"
	keep(admin.ApplyPools(ctx, &poolv1.ApplyPoolsRequest{Pools: []*poolv1.Pool{up, up2}}))
	keep(admin.ApplyPools(ctx, &poolv1.ApplyPoolsRequest{Pools: []*poolv1.Pool{up, up2}, ValidateOnly: true}))
	keep(admin.DrainPool(ctx, &poolv1.DrainPoolRequest{Name: "pools/s"}))
	keep(admin.GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/s"}))
	keep(admin.ListPools(ctx, &poolv1.ListPoolsRequest{}))
	keep(admin.ListPoolRevisions(ctx, &poolv1.ListPoolRevisionsRequest{Name: "pools/s"}))
	keep(admin.RollbackPool(ctx, &poolv1.RollbackPoolRequest{Name: "pools/s", Revision: 1}))
	for range 3 {
		keep(watch.Recv())
	}
	if len(errs) != 2 {
		t.Fatalf("want the two bad creates to fail, got %v", errs)
	}
	body := func(k []byte) string { return strings.Split(string(k), "\n")[1][:40] }
	for _, secret := range []string{body(keyPEM), body(otherKey), "PRIVATE KEY"} {
		for _, m := range seen {
			if b, _ := protojson.Marshal(m); strings.Contains(string(b), secret) {
				t.Fatalf("response %T carries key material %q", m, secret)
			}
		}
		for _, err := range errs {
			if strings.Contains(status.Convert(err).String(), secret) || strings.Contains(err.Error(), secret) {
				t.Fatalf("error carries key material: %v", err)
			}
		}
		if strings.Contains(e.log.String(), secret) {
			t.Fatalf("the log carries key material %q:\n%s", secret, e.log.String())
		}
	}
	if !strings.Contains(e.log.String(), "msg=audit") {
		t.Fatal("no audit lines were logged")
	}
}

// TestRedisPasswordNeverReturned writes a REDIS pool with a password through
// every write path and checks that no response, history entry, watch event
// or log line carries it, that password_set shows it, and that a pool read
// back and written whole keeps it.
func TestRedisPasswordNeverReturned(t *testing.T) {
	const password = "redis-pw-7f3a9c1e5b2d"
	e := startEnv(t, rolePrincipals(), nil, nil, func(c *poolmgr.ManagerConfig) { c.SecretKey = bytes.Repeat([]byte{7}, 32) })
	admin := poolv1.NewPoolAdminServiceClient(e.dial(t, nil))
	ctx := bearer(context.Background(), "tok-admin")
	watch, err := admin.WatchPools(ctx, &poolv1.WatchPoolsRequest{StartRevision: 0})
	if err != nil {
		t.Fatal(err)
	}
	var seen []proto.Message
	keep := func(m proto.Message, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		seen = append(seen, m)
	}
	pool := &poolv1.Pool{
		Endpoints: []string{e.echo.addr()},
		Protocol:  poolv1.Protocol_PROTOCOL_REDIS,
		Redis:     &poolv1.RedisSetup{Username: "app", Password: password, Database: 1},
	}
	created, err := admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "r", Pool: pool})
	keep(created, err)
	if r := created.GetRedis(); !r.GetPasswordSet() || r.GetPassword() != "" || r.GetUsername() != "app" || r.GetProtocolVersion() != 2 ||
		created.GetProtocol() != poolv1.Protocol_PROTOCOL_REDIS || created.GetResetTimeout().AsDuration() != poolmgr.DefaultResetTimeout {
		t.Fatalf("created = %v", created)
	}

	// The pool read back and written whole (no mask) keeps the password;
	// so does an Apply of it.
	readBack := proto.Clone(created).(*poolv1.Pool)
	readBack.Limits.MaxWaiters = 7
	updated, err := admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{Pool: readBack})
	keep(updated, err)
	if !updated.GetRedis().GetPasswordSet() || updated.GetLimits().GetMaxWaiters() != 7 {
		t.Fatalf("update of a read-back pool: %v", updated)
	}
	applied, err := admin.ApplyPools(ctx, &poolv1.ApplyPoolsRequest{Pools: []*poolv1.Pool{updated}})
	keep(applied, err)
	if applied.GetChanges()[0].GetAction() != poolv1.PoolChange_ACTION_UNCHANGED {
		t.Fatalf("apply of a read-back pool: %v", applied)
	}
	// A mask of other fields keeps it too.
	masked, err := admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{Pool: &poolv1.Pool{Name: "pools/r", Redis: &poolv1.RedisSetup{Database: 3}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"redis.database"}}})
	keep(masked, err)
	if !masked.GetRedis().GetPasswordSet() || masked.GetRedis().GetDatabase() != 3 {
		t.Fatalf("masked update: %v", masked)
	}
	if info, err := e.mgr.Get(context.Background(), "r"); err != nil || info.Config.Redis.Password != password {
		t.Fatalf("the stored password did not survive: %v", err)
	}

	got, err := admin.GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/r"})
	keep(got, err)
	list, err := admin.ListPools(ctx, &poolv1.ListPoolsRequest{})
	keep(list, err)
	revs, err := admin.ListPoolRevisions(ctx, &poolv1.ListPoolRevisionsRequest{Name: "pools/r"})
	keep(revs, err)
	for range 3 {
		keep(watch.Recv())
	}
	for _, m := range seen {
		if b, _ := protojson.Marshal(m); strings.Contains(string(b), password) {
			t.Fatalf("response %T carries the password", m)
		}
	}
	if strings.Contains(e.log.String(), password) {
		t.Fatalf("the log carries the password:\n%s", e.log.String())
	}

	// Naming redis.password explicitly, empty, clears it (here refused: a
	// username needs a password).
	_, err = admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{Pool: &poolv1.Pool{Name: "pools/r", Redis: &poolv1.RedisSetup{}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"redis.password"}}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "pool.redis.password") {
		t.Fatalf("clearing the password of a user: %v", err)
	}
}

// TestPostgresPasswordNeverReturned is TestRedisPasswordNeverReturned for
// a POSTGRES pool's password: no response, history entry, watch event or
// log line carries it, password_set shows it, a pool read back and written
// whole (or under a mask of other fields) keeps it, and naming
// postgres.password explicitly, empty, clears it.
func TestPostgresPasswordNeverReturned(t *testing.T) {
	const password = "pg-pw-3b8e1d6a0c4f"
	e := startEnv(t, rolePrincipals(), nil, nil, func(c *poolmgr.ManagerConfig) { c.SecretKey = bytes.Repeat([]byte{7}, 32) })
	admin := poolv1.NewPoolAdminServiceClient(e.dial(t, nil))
	ctx := bearer(context.Background(), "tok-admin")
	watch, err := admin.WatchPools(ctx, &poolv1.WatchPoolsRequest{StartRevision: 0})
	if err != nil {
		t.Fatal(err)
	}
	var seen []proto.Message
	keep := func(m proto.Message, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		seen = append(seen, m)
	}
	pool := &poolv1.Pool{
		Endpoints: []string{e.echo.addr()},
		Protocol:  poolv1.Protocol_PROTOCOL_POSTGRES,
		Postgres: &poolv1.PostgresSetup{Database: "app", User: "pool", Password: password,
			SslMode: poolv1.PostgresSSLMode_POSTGRES_SSL_MODE_REQUIRE, Params: map[string]string{"application_name": "web"}},
	}
	created, err := admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "pg", Pool: pool})
	keep(created, err)
	if pg := created.GetPostgres(); !pg.GetPasswordSet() || pg.GetPassword() != "" || pg.GetUser() != "pool" ||
		pg.GetResetQuery() != "DISCARD ALL" || pg.GetSslMode() != poolv1.PostgresSSLMode_POSTGRES_SSL_MODE_REQUIRE ||
		pg.GetParams()["application_name"] != "web" || created.GetProtocol() != poolv1.Protocol_PROTOCOL_POSTGRES {
		t.Fatalf("created = %v", created)
	}

	// The pool read back and written whole (no mask) keeps the password;
	// so does an Apply of it.
	readBack := proto.Clone(created).(*poolv1.Pool)
	readBack.Limits.MaxWaiters = 7
	updated, err := admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{Pool: readBack})
	keep(updated, err)
	if !updated.GetPostgres().GetPasswordSet() || updated.GetLimits().GetMaxWaiters() != 7 {
		t.Fatalf("update of a read-back pool: %v", updated)
	}
	applied, err := admin.ApplyPools(ctx, &poolv1.ApplyPoolsRequest{Pools: []*poolv1.Pool{updated}})
	keep(applied, err)
	if applied.GetChanges()[0].GetAction() != poolv1.PoolChange_ACTION_UNCHANGED {
		t.Fatalf("apply of a read-back pool: %v", applied)
	}
	// A mask of other fields keeps it too; so does "postgres" with the
	// stored user and no password.
	masked, err := admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{
		Pool:       &poolv1.Pool{Name: "pools/pg", Postgres: &poolv1.PostgresSetup{ResetQuery: "RESET ALL"}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"postgres.reset_query"}}})
	keep(masked, err)
	if !masked.GetPostgres().GetPasswordSet() || masked.GetPostgres().GetResetQuery() != "RESET ALL" {
		t.Fatalf("masked update: %v", masked)
	}
	group, err := admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{
		Pool:       &poolv1.Pool{Name: "pools/pg", Postgres: &poolv1.PostgresSetup{Database: "app2", User: "pool"}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"postgres"}}})
	keep(group, err)
	if !group.GetPostgres().GetPasswordSet() || group.GetPostgres().GetDatabase() != "app2" {
		t.Fatalf("update of the postgres group: %v", group)
	}
	if info, err := e.mgr.Get(context.Background(), "pg"); err != nil || info.Config.Postgres.Password != password {
		t.Fatalf("the stored password did not survive: %v", err)
	}

	got, err := admin.GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/pg"})
	keep(got, err)
	list, err := admin.ListPools(ctx, &poolv1.ListPoolsRequest{})
	keep(list, err)
	revs, err := admin.ListPoolRevisions(ctx, &poolv1.ListPoolRevisionsRequest{Name: "pools/pg"})
	keep(revs, err)
	for range 4 {
		keep(watch.Recv())
	}
	for _, m := range seen {
		if b, _ := protojson.Marshal(m); strings.Contains(string(b), password) {
			t.Fatalf("response %T carries the password", m)
		}
	}
	if strings.Contains(e.log.String(), password) {
		t.Fatalf("the log carries the password:\n%s", e.log.String())
	}

	// Naming postgres.password explicitly, empty, clears it (trust
	// authentication needs none).
	cleared, err := admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{Pool: &poolv1.Pool{Name: "pools/pg", Postgres: &poolv1.PostgresSetup{}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"postgres.password"}}})
	if err != nil || cleared.GetPostgres().GetPasswordSet() {
		t.Fatalf("clearing the password: %v, %v", cleared, err)
	}
	if info, err := e.mgr.Get(context.Background(), "pg"); err != nil || info.Config.Postgres.Password != "" {
		t.Fatalf("the password was not cleared: %v", err)
	}
}
