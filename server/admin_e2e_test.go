package server_test

import (
	"crypto/x509/pkix"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/store"

	"github.com/poolplane/poolplane/internal/testkit"
)

func TestCreateGetPool(t *testing.T) {
	e := startAdminEnv(t)
	ctx := ctxT(t)
	created := e.mustCreate(t, "api", func(p *poolv1.Pool) {
		p.Limits.AcquireTimeout = durationpb.New(2 * time.Second)
		p.Labels = map[string]string{"team": "core"}
	})
	if created.GetName() != "pools/api" || created.GetState() != poolv1.PoolState_POOL_STATE_ACTIVE ||
		created.GetRevision() <= 0 || created.GetGeneration() < 1 || created.GetCreateTime() == nil {
		t.Fatalf("created = %v", created)
	}
	if created.GetEtag() != `"`+itoa(created.GetRevision())+`"` {
		t.Fatalf("etag %q for revision %d", created.GetEtag(), created.GetRevision())
	}
	got, err := e.admin.GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/api"})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, created) {
		t.Fatalf("GetPool = %v\nwant %v", got, created)
	}
	// Defaults are filled in and shown.
	if got.GetLimits().GetMaxConnections() != 4 || got.GetLimits().GetMaxWaiters() != 1024 ||
		got.GetLimits().GetAcquireTimeout().AsDuration() != 2*time.Second ||
		got.GetLimits().GetDialTimeout().AsDuration() != 5*time.Second ||
		got.GetReusePolicy() != poolv1.ReusePolicy_REUSE_POLICY_REUSE ||
		got.GetIdleOrder() != poolv1.IdleOrder_IDLE_ORDER_LIFO ||
		got.GetLabels()["team"] != "core" {
		t.Fatalf("GetPool = %v", got)
	}
}

func TestCreatePoolErrors(t *testing.T) {
	e := startAdminEnv(t)
	ctx := ctxT(t)
	e.mustCreate(t, "api", nil)

	_, err := e.admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "api", Pool: &poolv1.Pool{Endpoints: []string{e.upstream}}})
	wantCode(t, err, codes.AlreadyExists, "POOL_EXISTS")

	_, err = e.admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "Bad_ID", Pool: &poolv1.Pool{Endpoints: []string{e.upstream}}})
	st := wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	if fs := violations(st); !hasField(fs, "pool_id") {
		t.Fatalf("violations %v, want pool_id", fs)
	}

	_, err = e.admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "x"})
	st = wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	if fs := violations(st); !hasField(fs, "pool") {
		t.Fatalf("violations %v, want pool", fs)
	}

	// Every bad field at once, named by its path in the request.
	_, err = e.admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "x", Pool: &poolv1.Pool{
		Limits: &poolv1.Limits{MaxConnections: -1},
	}})
	st = wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	if fs := violations(st); !hasField(fs, "pool.endpoints") || !hasField(fs, "pool.limits.max_connections") {
		t.Fatalf("violations %v", fs)
	}

	// A malformed duration and an unknown enum are caught in conversion.
	_, err = e.admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "x", Pool: &poolv1.Pool{
		Endpoints:   []string{e.upstream},
		DnsRefresh:  &durationpb.Duration{Seconds: 1, Nanos: -1},
		ReusePolicy: poolv1.ReusePolicy(42),
	}})
	st = wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	if fs := violations(st); !hasField(fs, "pool.dns_refresh") || !hasField(fs, "pool.reuse_policy") {
		t.Fatalf("violations %v", fs)
	}

	// validate_only answers as if created and writes nothing.
	vp, err := e.admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "dry", ValidateOnly: true, Pool: &poolv1.Pool{Endpoints: []string{e.upstream}}})
	if err != nil || vp.GetName() != "pools/dry" {
		t.Fatalf("validate_only: %v, %v", vp, err)
	}
	_, err = e.admin.GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/dry"})
	wantCode(t, err, codes.NotFound, "POOL_NOT_FOUND")
	_, err = e.admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "api", ValidateOnly: true, Pool: &poolv1.Pool{Endpoints: []string{e.upstream}}})
	wantCode(t, err, codes.AlreadyExists, "POOL_EXISTS")
}

func TestGetDeletePoolErrors(t *testing.T) {
	e := startAdminEnv(t)
	ctx := ctxT(t)
	_, err := e.admin.GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/nope"})
	wantCode(t, err, codes.NotFound, "POOL_NOT_FOUND")
	for _, name := range []string{"", "nope", "pools/", "pools/UPPER", "pools/a/b", "pool/a"} {
		_, err = e.admin.GetPool(ctx, &poolv1.GetPoolRequest{Name: name})
		st := wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
		if fs := violations(st); !hasField(fs, "name") {
			t.Fatalf("GetPool(%q) violations %v", name, fs)
		}
	}

	p := e.mustCreate(t, "api", nil)
	_, err = e.admin.DeletePool(ctx, &poolv1.DeletePoolRequest{Name: "pools/api", Etag: `"1234567"`})
	st := wantCode(t, err, codes.Aborted, "ETAG_MISMATCH")
	if got := errorInfo(st).GetMetadata()["current_etag"]; got != p.GetEtag() {
		t.Fatalf("current_etag = %q, want %q", got, p.GetEtag())
	}
	_, err = e.admin.DeletePool(ctx, &poolv1.DeletePoolRequest{Name: "pools/api", Etag: "garbage"})
	wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	if _, err := e.admin.DeletePool(ctx, &poolv1.DeletePoolRequest{Name: "pools/api", Etag: p.GetEtag(), ValidateOnly: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/api"}); err != nil {
		t.Fatalf("validate_only delete deleted: %v", err)
	}
	if _, err := e.admin.DeletePool(ctx, &poolv1.DeletePoolRequest{Name: "pools/api", Etag: p.GetEtag()}); err != nil {
		t.Fatal(err)
	}
	_, err = e.admin.GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/api"})
	wantCode(t, err, codes.NotFound, "POOL_NOT_FOUND")
	_, err = e.admin.DeletePool(ctx, &poolv1.DeletePoolRequest{Name: "pools/api"})
	wantCode(t, err, codes.NotFound, "POOL_NOT_FOUND")
}

func TestListPools(t *testing.T) {
	e := startAdminEnv(t)
	ctx := ctxT(t)
	for _, id := range []string{"c", "a", "b"} {
		e.mustCreate(t, id, nil)
	}
	all, err := e.admin.ListPools(ctx, &poolv1.ListPoolsRequest{})
	if err != nil || len(all.GetPools()) != 3 || all.GetNextPageToken() != "" {
		t.Fatalf("ListPools = %v, %v", all, err)
	}
	var names []string
	tok := ""
	for {
		page, err := e.admin.ListPools(ctx, &poolv1.ListPoolsRequest{PageSize: 2, PageToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		if len(page.GetPools()) > 2 {
			t.Fatalf("page of %d", len(page.GetPools()))
		}
		for _, p := range page.GetPools() {
			names = append(names, p.GetName())
		}
		if tok = page.GetNextPageToken(); tok == "" {
			break
		}
	}
	if strings.Join(names, ",") != "pools/a,pools/b,pools/c" {
		t.Fatalf("paged names %v", names)
	}
	for _, n := range []int32{-1, 1001} {
		_, err = e.admin.ListPools(ctx, &poolv1.ListPoolsRequest{PageSize: n})
		st := wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
		if !hasField(violations(st), "page_size") {
			t.Fatalf("page_size %d: %v", n, violations(st))
		}
	}
	_, err = e.admin.ListPools(ctx, &poolv1.ListPoolsRequest{PageToken: "not a token"})
	wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
}

func TestUpdatePoolMask(t *testing.T) {
	e := startAdminEnv(t)
	ctx := ctxT(t)
	orig := e.mustCreate(t, "api", func(p *poolv1.Pool) {
		p.Labels = map[string]string{"team": "core"}
		p.Limits.MaxWaiters = 10
	})
	mask := func(paths ...string) *fieldmaskpb.FieldMask { return &fieldmaskpb.FieldMask{Paths: paths} }

	// Only the masked field changes; a bad duration outside the mask is ignored.
	up, err := e.admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{
		Pool: &poolv1.Pool{Name: "pools/api", Limits: &poolv1.Limits{MaxWaiters: 20},
			DnsRefresh: &durationpb.Duration{Seconds: -1, Nanos: 1}},
		UpdateMask: mask("limits.max_waiters"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if up.GetLimits().GetMaxWaiters() != 20 || up.GetLimits().GetMaxConnections() != 4 ||
		up.GetLabels()["team"] != "core" || up.GetRevision() <= orig.GetRevision() {
		t.Fatalf("after mask update: %v", up)
	}

	// lowerCamelCase paths, as grpcurl users may write them.
	up, err = e.admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{
		Pool:       &poolv1.Pool{Name: "pools/api", Limits: &poolv1.Limits{MaxWaiters: 30}},
		UpdateMask: mask("limits.maxWaiters"),
	})
	if err != nil || up.GetLimits().GetMaxWaiters() != 30 {
		t.Fatalf("camelCase update: %v, %v", up, err)
	}

	// A message path updates the whole message.
	up, err = e.admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{
		Pool:       &poolv1.Pool{Name: "pools/api", Limits: &poolv1.Limits{MaxConnections: 8}},
		UpdateMask: mask("limits"),
	})
	if err != nil || up.GetLimits().GetMaxConnections() != 8 || up.GetLimits().GetMaxWaiters() != 1024 {
		t.Fatalf("limits update: %v, %v", up, err)
	}

	// Output-only, immutable and unknown paths are refused, all at once.
	_, err = e.admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{
		Pool:       &poolv1.Pool{Name: "pools/api"},
		UpdateMask: mask("state", "name", "no_such_field", "tls.client_key_fingerprint"),
	})
	st := wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	for i := range 4 {
		if f := "update_mask.paths[" + itoa(int64(i)) + "]"; !hasField(violations(st), f) {
			t.Fatalf("violations %v, want %s", violations(st), f)
		}
	}

	// A masked field is validated, and named by its request path.
	_, err = e.admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{
		Pool:       &poolv1.Pool{Name: "pools/api", Limits: &poolv1.Limits{MaxConnections: 200000}},
		UpdateMask: mask("limits.max_connections"),
	})
	st = wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	if !hasField(violations(st), "pool.limits.max_connections") {
		t.Fatalf("violations %v", violations(st))
	}

	// Etags: a stale one aborts, the current one succeeds, a bad one is invalid.
	cur, err := e.admin.GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/api"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{
		Pool:       &poolv1.Pool{Name: "pools/api", Etag: orig.GetEtag(), Labels: map[string]string{"x": "y"}},
		UpdateMask: mask("labels"),
	})
	st = wantCode(t, err, codes.Aborted, "ETAG_MISMATCH")
	if errorInfo(st).GetMetadata()["current_etag"] != cur.GetEtag() {
		t.Fatalf("metadata %v, want current_etag %s", errorInfo(st).GetMetadata(), cur.GetEtag())
	}
	_, err = e.admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{
		Pool: &poolv1.Pool{Name: "pools/api", Etag: "W/abc"}, UpdateMask: mask("labels"),
	})
	wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	up, err = e.admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{
		Pool:       &poolv1.Pool{Name: "pools/api", Etag: cur.GetEtag(), Labels: map[string]string{"x": "y"}},
		UpdateMask: mask("labels"),
	})
	if err != nil || up.GetLabels()["x"] != "y" || up.GetLabels()["team"] != "" {
		t.Fatalf("etag update: %v, %v", up, err)
	}

	// validate_only changes nothing.
	dry, err := e.admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{
		Pool:       &poolv1.Pool{Name: "pools/api", Limits: &poolv1.Limits{MaxWaiters: 7}},
		UpdateMask: mask("limits.max_waiters"), ValidateOnly: true,
	})
	if err != nil || dry.GetLimits().GetMaxWaiters() != 7 {
		t.Fatalf("validate_only: %v, %v", dry, err)
	}
	now, _ := e.admin.GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/api"})
	if now.GetLimits().GetMaxWaiters() == 7 || now.GetRevision() != up.GetRevision() {
		t.Fatalf("validate_only wrote: %v", now)
	}

	// An empty mask (and "*") replaces every writable field: unset ones
	// return to their defaults.
	for _, m := range []*fieldmaskpb.FieldMask{nil, mask("*")} {
		up, err = e.admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{
			Pool:       &poolv1.Pool{Name: "pools/api", Endpoints: []string{e.upstream}, Limits: &poolv1.Limits{MaxConnections: 3}},
			UpdateMask: m,
		})
		if err != nil || up.GetLimits().GetMaxConnections() != 3 || len(up.GetLabels()) != 0 ||
			up.GetLimits().GetMaxWaiters() != 1024 {
			t.Fatalf("replace (mask %v): %v, %v", m, up, err)
		}
	}
	_, err = e.admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{Pool: &poolv1.Pool{Name: "pools/api"}, UpdateMask: mask("*", "labels")})
	wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	_, err = e.admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{Pool: &poolv1.Pool{Name: "pools/none"}, UpdateMask: mask("labels")})
	wantCode(t, err, codes.NotFound, "POOL_NOT_FOUND")
	_, err = e.admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{})
	wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
}

// secretFree fails if m's wire form carries the private key.
func secretFree(t *testing.T, what string, m proto.Message, keyPEM string) {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	body := keyPEM[strings.Index(keyPEM, "\n")+1 : strings.LastIndex(keyPEM, "-----END")]
	if strings.Contains(string(b), "PRIVATE KEY") || strings.Contains(string(b), strings.TrimSpace(body)[:40]) {
		t.Fatalf("%s carries the private key", what)
	}
}

func TestPrivateKeyNeverReturned(t *testing.T) {
	e := startAdminEnv(t)
	ctx := ctxT(t)
	certPEM, keyPEM := testkit.SelfSigned(t, testkit.CertSpec{Subject: pkix.Name{CommonName: "poolplane-test-client"}, Client: true}).Strings()
	rev0, err := e.mgr.CurrentRevision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	watch, err := e.admin.WatchPools(ctx, &poolv1.WatchPoolsRequest{StartRevision: rev0})
	if err != nil {
		t.Fatal(err)
	}

	created := e.mustCreate(t, "mtls", func(p *poolv1.Pool) {
		p.Tls = &poolv1.UpstreamTLS{Enabled: true, ClientCertPem: certPEM, ClientKeyPem: keyPEM}
	})
	fp := created.GetTls().GetClientKeyFingerprint()
	if !strings.HasPrefix(fp, "sha256:") || len(fp) != len("sha256:")+64 {
		t.Fatalf("fingerprint %q", fp)
	}
	secretFree(t, "CreatePool", created, keyPEM)
	if created.GetTls().GetClientKeyPem() != "" || created.GetTls().GetClientCertPem() != certPEM {
		t.Fatalf("tls = %v", created.GetTls())
	}

	got, err := e.admin.GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/mtls"})
	if err != nil {
		t.Fatal(err)
	}
	secretFree(t, "GetPool", got, keyPEM)
	list, err := e.admin.ListPools(ctx, &poolv1.ListPoolsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	secretFree(t, "ListPools", list, keyPEM)

	// A masked update elsewhere keeps the key.
	up, err := e.admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{
		Pool:       &poolv1.Pool{Name: "pools/mtls", Limits: &poolv1.Limits{MaxWaiters: 5}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"limits.max_waiters"}},
	})
	if err != nil || up.GetTls().GetClientKeyFingerprint() != fp {
		t.Fatalf("masked update: %v, %v", up, err)
	}
	// A full replacement with the pool as read back (no key) keeps it too.
	back := proto.Clone(up).(*poolv1.Pool)
	back.Limits.MaxWaiters = 6
	up, err = e.admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{Pool: back})
	if err != nil || up.GetTls().GetClientKeyFingerprint() != fp || up.GetLimits().GetMaxWaiters() != 6 {
		t.Fatalf("round-trip update: %v, %v", up, err)
	}
	secretFree(t, "UpdatePool", up, keyPEM)
	// Naming the key explicitly with no value clears it: a cert without a key is invalid.
	_, err = e.admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{
		Pool:       &poolv1.Pool{Name: "pools/mtls"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"tls.client_key_pem"}},
	})
	wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")

	// Apply of the pool as read back is UNCHANGED: the stored key is kept.
	plan, err := e.admin.ApplyPools(ctx, &poolv1.ApplyPoolsRequest{Pools: []*poolv1.Pool{up}})
	if err != nil || len(plan.GetChanges()) != 1 || plan.GetChanges()[0].GetAction() != poolv1.PoolChange_ACTION_UNCHANGED {
		t.Fatalf("apply read-back: %v, %v", plan, err)
	}

	revs, err := e.admin.ListPoolRevisions(ctx, &poolv1.ListPoolRevisionsRequest{Name: "pools/mtls"})
	if err != nil || len(revs.GetRevisions()) < 3 {
		t.Fatalf("revisions: %v, %v", revs, err)
	}
	secretFree(t, "ListPoolRevisions", revs, keyPEM)
	for _, r := range revs.GetRevisions() {
		if r.GetPool().GetTls().GetClientKeyFingerprint() != fp {
			t.Fatalf("revision %d fingerprint %q", r.GetRevision(), r.GetPool().GetTls().GetClientKeyFingerprint())
		}
	}

	for range 3 { // create and two updates
		ev, err := watch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		secretFree(t, "WatchPools", ev, keyPEM)
		if ev.GetPool().GetTls().GetClientKeyFingerprint() != fp {
			t.Fatalf("watch event without fingerprint: %v", ev)
		}
	}
	if strings.Contains(e.log.String(), "PRIVATE KEY") {
		t.Fatal("the log carries the private key")
	}
}

func TestApplyPools(t *testing.T) {
	e := startAdminEnv(t)
	ctx := ctxT(t)
	pool := func(id string, maxConns int32) *poolv1.Pool {
		return &poolv1.Pool{Name: "pools/" + id, Endpoints: []string{e.upstream}, Limits: &poolv1.Limits{MaxConnections: maxConns}}
	}
	actions := func(r *poolv1.ApplyPoolsResponse) string {
		var s []string
		for _, c := range r.GetChanges() {
			s = append(s, strings.TrimPrefix(c.GetName(), "pools/")+"="+strings.TrimPrefix(c.GetAction().String(), "ACTION_"))
		}
		return strings.Join(s, ",")
	}

	r, err := e.admin.ApplyPools(ctx, &poolv1.ApplyPoolsRequest{Pools: []*poolv1.Pool{pool("b", 2), pool("a", 2)}})
	if err != nil || actions(r) != "a=CREATE,b=CREATE" || r.GetRevision() <= 0 {
		t.Fatalf("first apply: %v, %v", r, err)
	}
	// Idempotent: the same set again changes nothing and writes nothing.
	r, err = e.admin.ApplyPools(ctx, &poolv1.ApplyPoolsRequest{Pools: []*poolv1.Pool{pool("a", 2), pool("b", 2)}})
	if err != nil || actions(r) != "a=UNCHANGED,b=UNCHANGED" || r.GetRevision() != 0 {
		t.Fatalf("second apply: %v, %v", r, err)
	}
	// A change is planned with its fields.
	r, err = e.admin.ApplyPools(ctx, &poolv1.ApplyPoolsRequest{Pools: []*poolv1.Pool{pool("a", 2), pool("b", 3)}})
	if err != nil || actions(r) != "a=UNCHANGED,b=UPDATE" || r.GetRevision() <= 0 {
		t.Fatalf("update apply: %v, %v", r, err)
	}
	if cf := r.GetChanges()[1].GetChangedFields(); len(cf) == 0 || cf[0] != "limits.max_connections" {
		t.Fatalf("changed fields %v", cf)
	}
	// validate_only plans without writing.
	r, err = e.admin.ApplyPools(ctx, &poolv1.ApplyPoolsRequest{Pools: []*poolv1.Pool{pool("c", 1)}, Prune: true, ValidateOnly: true})
	if err != nil || actions(r) != "a=DELETE,b=DELETE,c=CREATE" || r.GetRevision() != 0 {
		t.Fatalf("dry run: %v, %v", r, err)
	}
	_, err = e.admin.GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/c"})
	wantCode(t, err, codes.NotFound, "POOL_NOT_FOUND")
	// Prune deletes what is not wanted.
	r, err = e.admin.ApplyPools(ctx, &poolv1.ApplyPoolsRequest{Pools: []*poolv1.Pool{pool("a", 2)}, Prune: true})
	if err != nil || actions(r) != "a=UNCHANGED,b=DELETE" {
		t.Fatalf("prune: %v, %v", r, err)
	}
	_, err = e.admin.GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/b"})
	wantCode(t, err, codes.NotFound, "POOL_NOT_FOUND")

	// Bad names and configs are reported per pool, all at once.
	_, err = e.admin.ApplyPools(ctx, &poolv1.ApplyPoolsRequest{Pools: []*poolv1.Pool{
		{Name: "a", Endpoints: []string{e.upstream}},
		{Name: "pools/ok"},
		{Name: "pools/dup", Endpoints: []string{e.upstream}},
		{Name: "pools/dup", Endpoints: []string{e.upstream}},
	}})
	st := wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	fs := violations(st)
	if !hasField(fs, "pools[0].name") {
		t.Fatalf("violations %v", fs)
	}
	_, err = e.admin.ApplyPools(ctx, &poolv1.ApplyPoolsRequest{Pools: []*poolv1.Pool{
		{Name: "pools/ok"},
		{Name: "pools/dup", Endpoints: []string{e.upstream}},
		{Name: "pools/dup", Endpoints: []string{e.upstream}},
	}})
	st = wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	fs = violations(st)
	if !hasField(fs, "pools[0].endpoints") || !hasField(fs, "pools[2].name") {
		t.Fatalf("violations %v", fs)
	}
}

func TestRevisionsAndRollback(t *testing.T) {
	e := startAdminEnv(t)
	ctx := ctxT(t)
	v1 := e.mustCreate(t, "api", nil)
	v2, err := e.admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{
		Pool:       &poolv1.Pool{Name: "pools/api", Limits: &poolv1.Limits{MaxConnections: 7}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"limits.max_connections"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	revs, err := e.admin.ListPoolRevisions(ctx, &poolv1.ListPoolRevisionsRequest{Name: "pools/api"})
	if err != nil {
		t.Fatal(err)
	}
	rs := revs.GetRevisions()
	if len(rs) != 2 || rs[0].GetRevision() != v2.GetRevision() || rs[1].GetRevision() != v1.GetRevision() {
		t.Fatalf("revisions (newest first) = %v", rs)
	}
	if rs[0].GetActor() != "anonymous" || rs[0].GetTime() == nil || rs[0].GetPool().GetLimits().GetMaxConnections() != 7 ||
		rs[1].GetPool().GetLimits().GetMaxConnections() != 4 {
		t.Fatalf("revisions = %v", rs)
	}
	// Paging, one per page.
	p1, err := e.admin.ListPoolRevisions(ctx, &poolv1.ListPoolRevisionsRequest{Name: "pools/api", PageSize: 1})
	if err != nil || len(p1.GetRevisions()) != 1 || p1.GetNextPageToken() == "" {
		t.Fatalf("page 1: %v, %v", p1, err)
	}
	p2, err := e.admin.ListPoolRevisions(ctx, &poolv1.ListPoolRevisionsRequest{Name: "pools/api", PageSize: 1, PageToken: p1.GetNextPageToken()})
	if err != nil || len(p2.GetRevisions()) != 1 || p2.GetRevisions()[0].GetRevision() != v1.GetRevision() || p2.GetNextPageToken() != "" {
		t.Fatalf("page 2: %v, %v", p2, err)
	}
	_, err = e.admin.ListPoolRevisions(ctx, &poolv1.ListPoolRevisionsRequest{Name: "pools/api", PageToken: "zzz"})
	wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	_, err = e.admin.ListPoolRevisions(ctx, &poolv1.ListPoolRevisionsRequest{Name: "pools/never"})
	wantCode(t, err, codes.NotFound, "")

	// Rollback to the first version, as a new revision.
	rb, err := e.admin.RollbackPool(ctx, &poolv1.RollbackPoolRequest{Name: "pools/api", Revision: v1.GetRevision()})
	if err != nil || rb.GetLimits().GetMaxConnections() != 4 || rb.GetRevision() <= v2.GetRevision() {
		t.Fatalf("rollback: %v, %v", rb, err)
	}
	_, err = e.admin.RollbackPool(ctx, &poolv1.RollbackPoolRequest{Name: "pools/api"})
	wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	_, err = e.admin.RollbackPool(ctx, &poolv1.RollbackPoolRequest{Name: "pools/api", Revision: 1 << 40})
	if err == nil {
		t.Fatal("rollback to a future revision succeeded")
	}

	// Delete, then roll back: the pool is re-created.
	if _, err := e.admin.DeletePool(ctx, &poolv1.DeletePoolRequest{Name: "pools/api"}); err != nil {
		t.Fatal(err)
	}
	revs, err = e.admin.ListPoolRevisions(ctx, &poolv1.ListPoolRevisionsRequest{Name: "pools/api"})
	if err != nil || !revs.GetRevisions()[0].GetDeleted() {
		t.Fatalf("after delete: %v, %v", revs, err)
	}
	rb, err = e.admin.RollbackPool(ctx, &poolv1.RollbackPoolRequest{Name: "pools/api", Revision: v2.GetRevision()})
	if err != nil || rb.GetLimits().GetMaxConnections() != 7 || rb.GetState() != poolv1.PoolState_POOL_STATE_ACTIVE {
		t.Fatalf("rollback after delete: %v, %v", rb, err)
	}
}

func TestLifecycleVerbs(t *testing.T) {
	e := startAdminEnv(t)
	ctx := ctxT(t)
	p := e.mustCreate(t, "api", nil)
	name := "pools/api"

	got, err := e.admin.PausePool(ctx, &poolv1.PausePoolRequest{Name: name})
	if err != nil || got.GetState() != poolv1.PoolState_POOL_STATE_PAUSED {
		t.Fatalf("pause: %v, %v", got, err)
	}
	got, err = e.admin.DrainPool(ctx, &poolv1.DrainPoolRequest{Name: name})
	if err != nil || got.GetState() != poolv1.PoolState_POOL_STATE_DRAINING {
		t.Fatalf("drain: %v, %v", got, err)
	}
	got, err = e.admin.ResumePool(ctx, &poolv1.ResumePoolRequest{Name: name})
	if err != nil || got.GetState() != poolv1.PoolState_POOL_STATE_ACTIVE {
		t.Fatalf("resume: %v, %v", got, err)
	}
	got, err = e.admin.ReconnectPool(ctx, &poolv1.ReconnectPoolRequest{Name: name})
	if err != nil || got.GetGeneration() != p.GetGeneration()+1 {
		t.Fatalf("reconnect: %v, %v (was generation %d)", got, err, p.GetGeneration())
	}
	// The state is durable: it shows in Get and in the history.
	if _, err := e.admin.PausePool(ctx, &poolv1.PausePoolRequest{Name: name}); err != nil {
		t.Fatal(err)
	}
	got, err = e.admin.GetPool(ctx, &poolv1.GetPoolRequest{Name: name})
	if err != nil || got.GetState() != poolv1.PoolState_POOL_STATE_PAUSED {
		t.Fatalf("get after pause: %v, %v", got, err)
	}

	_, err = e.admin.DrainPool(ctx, &poolv1.DrainPoolRequest{Name: "pools/none"})
	wantCode(t, err, codes.NotFound, "POOL_NOT_FOUND")
	_, err = e.admin.PausePool(ctx, &poolv1.PausePoolRequest{Name: "bad"})
	wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	_, err = e.admin.ResumePool(ctx, &poolv1.ResumePoolRequest{})
	wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	_, err = e.admin.ReconnectPool(ctx, &poolv1.ReconnectPoolRequest{Name: "pools/none"})
	wantCode(t, err, codes.NotFound, "POOL_NOT_FOUND")
}

func TestListAndRevokeLeases(t *testing.T) {
	e := startAdminEnv(t)
	ctx := ctxT(t)
	e.mustCreate(t, "api", nil)
	e.mustCreate(t, "other", nil)
	p, err := e.mgr.Pool("api")
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Acquire(ctx, "tester")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Release(false) })

	for _, parent := range []string{"pools/-", "pools/api"} {
		ls, err := e.admin.ListLeases(ctx, &poolv1.ListLeasesRequest{Parent: parent})
		if err != nil || len(ls.GetLeases()) != 1 {
			t.Fatalf("ListLeases(%s) = %v, %v", parent, ls, err)
		}
		l := ls.GetLeases()[0]
		if !strings.HasPrefix(l.GetName(), "pools/api/leases/") || l.GetClientName() != "tester" ||
			l.GetUpstreamAddr() != e.upstream || l.GetGrantTime() == nil || l.GetHeld() == nil || l.GetGeneration() != 1 {
			t.Fatalf("lease = %v", l)
		}
	}
	ls, err := e.admin.ListLeases(ctx, &poolv1.ListLeasesRequest{Parent: "pools/other"})
	if err != nil || len(ls.GetLeases()) != 0 {
		t.Fatalf("ListLeases(other) = %v, %v", ls, err)
	}
	_, err = e.admin.ListLeases(ctx, &poolv1.ListLeasesRequest{Parent: "pools/none"})
	wantCode(t, err, codes.NotFound, "POOL_NOT_FOUND")
	_, err = e.admin.ListLeases(ctx, &poolv1.ListLeasesRequest{Parent: "nope"})
	st := wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	if !hasField(violations(st), "parent") {
		t.Fatalf("violations %v", violations(st))
	}

	all, _ := e.admin.ListLeases(ctx, &poolv1.ListLeasesRequest{Parent: "pools/-"})
	name := all.GetLeases()[0].GetName()
	leaseID := strings.TrimPrefix(name, "pools/api/leases/")
	// The lease under another pool's name is not found.
	_, err = e.admin.RevokeLease(ctx, &poolv1.RevokeLeaseRequest{Name: "pools/other/leases/" + leaseID})
	wantCode(t, err, codes.NotFound, "LEASE_NOT_FOUND")
	if _, err := e.admin.RevokeLease(ctx, &poolv1.RevokeLeaseRequest{Name: name}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("revoked lease's connection not closed")
	}
	_, err = e.admin.RevokeLease(ctx, &poolv1.RevokeLeaseRequest{Name: name})
	wantCode(t, err, codes.NotFound, "LEASE_NOT_FOUND")
	for _, bad := range []string{"", "pools/api", "pools/api/leases/", "pools/api/leases/UP", "x/api/leases/a"} {
		_, err = e.admin.RevokeLease(ctx, &poolv1.RevokeLeaseRequest{Name: bad})
		wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	}
}

func TestWatchPools(t *testing.T) {
	e := startAdminEnv(t)
	ctx := ctxT(t)
	a := e.mustCreate(t, "a", nil)

	w, err := e.admin.WatchPools(ctx, &poolv1.WatchPoolsRequest{StartRevision: a.GetRevision()})
	if err != nil {
		t.Fatal(err)
	}
	e.mustCreate(t, "b", nil)
	if _, err := e.admin.PausePool(ctx, &poolv1.PausePoolRequest{Name: "pools/a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.DeletePool(ctx, &poolv1.DeletePoolRequest{Name: "pools/b"}); err != nil {
		t.Fatal(err)
	}
	type ev struct {
		typ   poolv1.WatchPoolsResponse_EventType
		name  string
		state poolv1.PoolState
	}
	want := []ev{
		{poolv1.WatchPoolsResponse_EVENT_TYPE_PUT, "pools/b", poolv1.PoolState_POOL_STATE_ACTIVE},
		{poolv1.WatchPoolsResponse_EVENT_TYPE_PUT, "pools/a", poolv1.PoolState_POOL_STATE_PAUSED},
		{poolv1.WatchPoolsResponse_EVENT_TYPE_DELETE, "pools/b", poolv1.PoolState_POOL_STATE_ACTIVE},
	}
	last := a.GetRevision()
	for i, wv := range want {
		got, err := w.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if got.GetType() != wv.typ || got.GetPool().GetName() != wv.name || got.GetPool().GetState() != wv.state {
			t.Fatalf("event %d = %v, want %v", i, got, wv)
		}
		if got.GetRevision() <= last {
			t.Fatalf("event %d revision %d after %d", i, got.GetRevision(), last)
		}
		last = got.GetRevision()
	}

	_, err = recvErr(e.admin.WatchPools(ctx, &poolv1.WatchPoolsRequest{StartRevision: -1}))
	wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
}

func TestWatchPoolsCompacted(t *testing.T) {
	e := startAdminEnv(t, func(o *adminEnvOptions) { o.storeOpts = store.Options{LogLimit: 2} })
	ctx := ctxT(t)
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		e.mustCreate(t, id, nil)
	}
	_, err := recvErr(e.admin.WatchPools(ctx, &poolv1.WatchPoolsRequest{StartRevision: 1}))
	wantCode(t, err, codes.OutOfRange, "REVISION_COMPACTED")
}

// recvErr returns the first error of a server stream.
func recvErr[T any](s interface{ Recv() (*T, error) }, err error) (*T, error) {
	if err != nil {
		return nil, err
	}
	for {
		m, err := s.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return m, nil
			}
			return nil, err
		}
	}
}

func itoa(n int64) string {
	var b [20]byte
	i := len(b)
	if n == 0 {
		return "0"
	}
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}
