package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"log/slog"
	"math/big"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/store"

	"github.com/poolplane/poolplane/internal/servertest/harness"
	"github.com/poolplane/poolplane/internal/testkit"
)

// authEnv is a server with authentication, on loopback.
type authEnv struct {
	mgr    *poolmgr.Manager
	health *Health
	addr   string
	log    *testkit.SyncBuffer
	echo   *echoUpstream
}

// startAuthEnv starts a server authenticating against ps, over TLS when
// serverTLS is set.
func startAuthEnv(t *testing.T, ps []Principal, serverTLS *tls.Config, mod func(*Config)) *authEnv {
	t.Helper()
	return startEnv(t, ps, serverTLS, mod, nil)
}

// startEnv is startAuthEnv with a hook on the Manager's config; ps nil
// means no authentication. The log captures every level.
func startEnv(t *testing.T, ps []Principal, serverTLS *tls.Config, mod func(*Config), mmod func(*poolmgr.ManagerConfig)) *authEnv {
	t.Helper()
	e := &authEnv{log: &testkit.SyncBuffer{}, echo: newEchoUpstream(t)}
	logger := slog.New(slog.NewTextHandler(e.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.mgr = harness.Manager(t, store.Options{}, logger, mmod)
	cfg := Config{Manager: e.mgr, Logger: logger}
	if ps != nil {
		a, err := NewAuthenticator(ps)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Auth = a
	}
	if mod != nil {
		mod(&cfg)
	}
	var opts []grpc.ServerOption
	if serverTLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(serverTLS)))
	}
	srv, svc, err := New(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	e.health = svc.Health
	e.addr = harness.Serve(t, srv, svc.Lease, false)
	return e
}

func (e *authEnv) dial(t *testing.T, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	cc, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// create makes pool id over the echo upstream, as the manager (no RPC).
func (e *authEnv) create(t *testing.T, id string) {
	t.Helper()
	if _, err := e.mgr.Create(context.Background(), id, poolmgr.Config{Endpoints: []string{e.echo.addr()}}, poolmgr.WriteOptions{Actor: "test"}); err != nil {
		t.Fatal(err)
	}
}

func bearer(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// invoke calls method with an empty request and returns the first error
// (nil when the call succeeds or a stream sends a first message).
func invoke(ctx context.Context, cc *grpc.ClientConn, method string, sd grpc.StreamDesc, unary bool) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if unary {
		return cc.Invoke(ctx, method, &emptypb.Empty{}, &emptypb.Empty{})
	}
	s, err := cc.NewStream(ctx, &sd, method)
	if err != nil {
		return err
	}
	if err := s.SendMsg(&emptypb.Empty{}); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		_ = err // the status comes with RecvMsg
	}
	_ = s.CloseSend()
	return s.RecvMsg(&emptypb.Empty{})
}

type rpc struct {
	method string
	desc   grpc.StreamDesc
	unary  bool
}

// everyRPC lists every method of the poolplane services.
func everyRPC() []rpc {
	var out []rpc
	for _, sd := range []grpc.ServiceDesc{poolv1.PoolAdminService_ServiceDesc, poolv1.LeaseService_ServiceDesc, poolv1.StatsService_ServiceDesc} {
		for _, m := range sd.Methods {
			out = append(out, rpc{method: "/" + sd.ServiceName + "/" + m.MethodName, unary: true})
		}
		for _, s := range sd.Streams {
			out = append(out, rpc{method: "/" + sd.ServiceName + "/" + s.StreamName, desc: s})
		}
	}
	return out
}

func reasonOf(err error) string {
	for _, d := range status.Convert(err).Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei.GetReason()
		}
	}
	return ""
}

var roleTokens = map[Role]string{RoleAdmin: "tok-admin", RoleOperator: "tok-operator", RoleViewer: "tok-viewer", RoleClient: "tok-client"}

func rolePrincipals() []Principal {
	var ps []Principal
	for r, tok := range roleTokens {
		ps = append(ps, Principal{Name: "p-" + string(r), Role: r, TokenSHA256: HashToken(tok)})
	}
	return ps
}

// TestAuthEveryRPC calls every RPC of every service without credentials,
// with a wrong token, and as every role: unauthenticated calls fail with
// UNAUTHENTICATED, calls the role may not make with PERMISSION_DENIED, and
// the others get past authorization.
func TestAuthEveryRPC(t *testing.T) {
	e := startAuthEnv(t, rolePrincipals(), nil, nil)
	e.create(t, "a")
	cc := e.dial(t, nil)
	ctx := context.Background()
	for _, r := range everyRPC() {
		for _, tok := range []string{"", "wrong"} {
			c := ctx
			if tok != "" {
				c = bearer(ctx, tok)
			}
			err := invoke(c, cc, r.method, r.desc, r.unary)
			if status.Code(err) != codes.Unauthenticated || reasonOf(err) != "UNAUTHENTICATED" {
				t.Errorf("%s with token %q: %v, want UNAUTHENTICATED", r.method, tok, err)
			}
		}
		for _, role := range roles {
			err := invoke(bearer(ctx, roleTokens[role]), cc, r.method, r.desc, r.unary)
			code := status.Code(err)
			if contains(wantAllowed[r.method], role) {
				if code == codes.PermissionDenied || code == codes.Unauthenticated {
					t.Errorf("%s as %s: %v, want it allowed", r.method, role, err)
				}
			} else if code != codes.PermissionDenied || reasonOf(err) != "PERMISSION_DENIED" {
				t.Errorf("%s as %s: %v, want PERMISSION_DENIED", r.method, role, err)
			}
		}
	}
	// Health stays open.
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health without credentials: %v", err)
	}
	if strings.Contains(e.log.String(), "tok-") {
		t.Fatal("a token reached the log")
	}
}

func TestAuthClientPoolPatterns(t *testing.T) {
	ps := []Principal{{Name: "payments", Role: RoleClient, TokenSHA256: HashToken("pay"), Pools: []string{"pay-*"}}}
	e := startAuthEnv(t, ps, nil, nil)
	e.create(t, "pay-eu")
	e.create(t, "api")
	cc := e.dial(t, nil)
	ctx := bearer(context.Background(), "pay")
	lc := poolv1.NewLeaseServiceClient(cc)

	s, err := lc.Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustSend(t, s, openFrame("pools/api"))
	_, err = s.Recv()
	if status.Code(err) != codes.PermissionDenied || reasonOf(err) != "PERMISSION_DENIED" {
		t.Fatalf("lease outside the patterns: %v", err)
	}
	if st, _ := e.mgr.Pool("api"); st.Stats().Acquires != 0 {
		t.Fatal("the refused lease acquired a connection")
	}

	s, err = lc.Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustSend(t, s, openFrame("pools/pay-eu"))
	recvGranted(t, s)
	mustSend(t, s, dataFrame([]byte("hi")))
	if got := readEcho(t, s, 2); string(got) != "hi" {
		t.Fatalf("echo %q", got)
	}
	// The same stream cannot switch to a pool outside the patterns.
	mustSend(t, s, releaseFrame(true))
	recvEnded(t, s)
	mustSend(t, s, openFrame("pools/api"))
	if _, err := s.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("second open outside the patterns: %v", err)
	}

	stats := poolv1.NewStatsServiceClient(cc)
	if _, err := stats.GetPoolStats(ctx, &poolv1.GetPoolStatsRequest{Name: "pools/api"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("GetPoolStats outside: %v", err)
	}
	if _, err := stats.GetPoolStats(ctx, &poolv1.GetPoolStatsRequest{Name: "pools/pay-eu"}); err != nil {
		t.Fatalf("GetPoolStats inside: %v", err)
	}
	w, err := stats.WatchPoolStats(ctx, &poolv1.WatchPoolStatsRequest{Names: []string{"pools/api"}})
	if err == nil {
		_, err = w.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("WatchPoolStats of a pool outside: %v", err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err = stats.WatchPoolStats(wctx, &poolv1.WatchPoolStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := w.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetStats()) != 1 || resp.GetStats()[0].GetName() != "pools/pay-eu" {
		t.Fatalf("WatchPoolStats of every pool shows %v, want only pools/pay-eu", resp.GetStats())
	}
}

func TestAuthLeaseCap(t *testing.T) {
	ps := []Principal{{Name: "capped", Role: RoleClient, TokenSHA256: HashToken("c"), MaxLeases: 1}}
	e := startAuthEnv(t, ps, nil, nil)
	e.create(t, "a")
	cc := e.dial(t, nil)
	ctx := bearer(context.Background(), "c")
	lc := poolv1.NewLeaseServiceClient(cc)
	s1, err := lc.Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustSend(t, s1, openFrame("pools/a"))
	recvGranted(t, s1)

	s2, err := lc.Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustSend(t, s2, openFrame("pools/a"))
	_, err = s2.Recv()
	if status.Code(err) != codes.ResourceExhausted || reasonOf(err) != "QUOTA_EXCEEDED" {
		t.Fatalf("second lease: %v, want RESOURCE_EXHAUSTED QUOTA_EXCEEDED", err)
	}

	mustSend(t, s1, releaseFrame(true))
	recvEnded(t, s1)
	s3, err := lc.Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustSend(t, s3, openFrame("pools/a"))
	recvGranted(t, s3)
	mustSend(t, s3, releaseFrame(true))
	recvEnded(t, s3)
}

func TestStatsWatcherBound(t *testing.T) {
	e := startAuthEnv(t, rolePrincipals(), nil, func(c *Config) { c.MaxStatsWatchers = 1 })
	cc := e.dial(t, nil)
	ctx, cancel := context.WithCancel(bearer(context.Background(), "tok-viewer"))
	defer cancel()
	stats := poolv1.NewStatsServiceClient(cc)
	w1, err := stats.WatchPoolStats(ctx, &poolv1.WatchPoolStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w1.Recv(); err != nil {
		t.Fatal(err)
	}
	w2, err := stats.WatchPoolStats(ctx, &poolv1.WatchPoolStatsRequest{})
	if err == nil {
		_, err = w2.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted || reasonOf(err) != "QUOTA_EXCEEDED" {
		t.Fatalf("second watcher: %v", err)
	}
}

func TestAuthMTLS(t *testing.T) {
	ca := testkit.NewCA(t)
	serverCert := ca.Issue(t, testkit.CertSpec{Subject: pkix.Name{CommonName: "poold"}, Hosts: []string{"poold.test"}, Server: true}).TLS
	serverTLS := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{serverCert},
		ClientCAs:    ca.Pool(),
		ClientAuth:   tls.VerifyClientCertIfGiven,
	}
	ps := []Principal{
		{Name: "ops-cert", Role: RoleAdmin, MTLSSubject: "CN=ops,O=Acme"},
		{Name: "svc-cert", Role: RoleViewer, MTLSSAN: "spiffe://acme/svc"},
		{Name: "cn-only", Role: RoleViewer, MTLSSubject: "bare"},
		{Name: "bot", Role: RoleAdmin, TokenSHA256: HashToken("bot")},
	}
	e := startAuthEnv(t, ps, serverTLS, nil)
	clientTLS := func(certs ...tls.Certificate) credentials.TransportCredentials {
		return credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: ca.Pool(), ServerName: "poold.test", Certificates: certs})
	}
	ctx := context.Background()

	ops := ca.Issue(t, testkit.CertSpec{Subject: pkix.Name{CommonName: "ops", Organization: []string{"Acme"}}, Client: true}).TLS
	admin := poolv1.NewPoolAdminServiceClient(e.dial(t, clientTLS(ops)))
	if _, err := admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "m", Pool: &poolv1.Pool{Endpoints: []string{e.echo.addr()}}}); err != nil {
		t.Fatalf("create as ops-cert: %v", err)
	}
	revs, err := admin.ListPoolRevisions(ctx, &poolv1.ListPoolRevisionsRequest{Name: "pools/m"})
	if err != nil || revs.GetRevisions()[0].GetActor() != "ops-cert" {
		t.Fatalf("history actor: %v %v", revs, err)
	}

	svc := ca.Issue(t, testkit.CertSpec{Subject: pkix.Name{CommonName: "whatever"}, URIs: []string{"spiffe://acme/svc"}, Client: true}).TLS
	viewer := poolv1.NewPoolAdminServiceClient(e.dial(t, clientTLS(svc)))
	if _, err := viewer.GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/m"}); err != nil {
		t.Fatalf("read as svc-cert (SAN): %v", err)
	}
	_, err = viewer.DeletePool(ctx, &poolv1.DeletePoolRequest{Name: "pools/m"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("delete as a viewer certificate: %v", err)
	}
	bare := ca.Issue(t, testkit.CertSpec{Subject: pkix.Name{CommonName: "bare", Organization: []string{"X"}}, Client: true}).TLS
	if _, err := poolv1.NewPoolAdminServiceClient(e.dial(t, clientTLS(bare))).GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/m"}); err != nil {
		t.Fatalf("read as cn-only: %v", err)
	}

	stranger := ca.Issue(t, testkit.CertSpec{Subject: pkix.Name{CommonName: "stranger"}, Client: true}).TLS
	_, err = poolv1.NewPoolAdminServiceClient(e.dial(t, clientTLS(stranger))).GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/m"})
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "CN=stranger") {
		t.Fatalf("unmapped certificate: %v", err)
	}
	// A certificate from another CA fails the handshake.
	other := testkit.NewCA(t)
	forged := other.Issue(t, testkit.CertSpec{Subject: pkix.Name{CommonName: "ops", Organization: []string{"Acme"}}, Client: true}).TLS
	_, err = poolv1.NewPoolAdminServiceClient(e.dial(t, clientTLS(forged))).GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/m"})
	if code := status.Code(err); code != codes.Unavailable && code != codes.Unauthenticated {
		t.Fatalf("certificate of another CA: %v", err)
	}

	// No certificate: a token over TLS works, nothing does not.
	anon := poolv1.NewPoolAdminServiceClient(e.dial(t, clientTLS()))
	if _, err := anon.GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/m"}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("TLS without credentials: %v", err)
	}
	if _, err := anon.GetPool(bearer(ctx, "bot"), &poolv1.GetPoolRequest{Name: "pools/m"}); err != nil {
		t.Fatalf("token over TLS: %v", err)
	}
	// A wrong token fails even with a valid certificate.
	if _, err := admin.GetPool(bearer(ctx, "nope"), &poolv1.GetPoolRequest{Name: "pools/m"}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("wrong token with a certificate: %v", err)
	}
}

func TestAuditLog(t *testing.T) {
	e := startAuthEnv(t, rolePrincipals(), nil, nil)
	cc := e.dial(t, nil)
	ctx := context.Background()
	admin := poolv1.NewPoolAdminServiceClient(cc)
	p, err := admin.CreatePool(bearer(ctx, "tok-admin"), &poolv1.CreatePoolRequest{PoolId: "x", Pool: &poolv1.Pool{Endpoints: []string{e.echo.addr()}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.DeletePool(bearer(ctx, "tok-viewer"), &poolv1.DeletePoolRequest{Name: "pools/x"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("delete as viewer: %v", err)
	}
	if _, err := admin.DrainPool(bearer(ctx, "tok-operator"), &poolv1.DrainPoolRequest{Name: "pools/x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.GetPool(bearer(ctx, "tok-viewer"), &poolv1.GetPoolRequest{Name: "pools/x"}); err != nil {
		t.Fatal(err)
	}
	log := e.log.String()
	for _, want := range []string{
		"msg=audit method=/poolplane.v1.PoolAdminService/CreatePool principal=p-admin target=pools/x code=OK revision=" + itoa64(p.GetRevision()),
		"msg=audit method=/poolplane.v1.PoolAdminService/DeletePool principal=p-viewer target=pools/x code=PermissionDenied",
		"msg=audit method=/poolplane.v1.PoolAdminService/DrainPool principal=p-operator target=pools/x code=OK",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, "msg=audit method=/poolplane.v1.PoolAdminService/GetPool") {
		t.Error("reads are audited")
	}
	revs, err := admin.ListPoolRevisions(bearer(ctx, "tok-viewer"), &poolv1.ListPoolRevisionsRequest{Name: "pools/x"})
	if err != nil {
		t.Fatal(err)
	}
	var actors []string
	for _, r := range revs.GetRevisions() {
		actors = append(actors, r.GetActor())
	}
	if strings.Join(actors, ",") != "p-operator,p-admin" {
		t.Fatalf("history actors %v", actors)
	}
}

func itoa64(n int64) string { return big.NewInt(n).String() }

func TestMessageSizeLimit(t *testing.T) {
	e := startEnv(t, nil, nil, func(c *Config) { c.MaxRecvMsgSize = 2 << 20 }, nil)
	e.create(t, "a")
	cc := e.dial(t, nil)
	ctx := context.Background()
	big := strings.Repeat("x", 2<<20)
	_, err := poolv1.NewPoolAdminServiceClient(cc).CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "b",
		Pool: &poolv1.Pool{Endpoints: []string{e.echo.addr()}, Labels: map[string]string{"k": big}}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a 2 MiB request: %v, want RESOURCE_EXHAUSTED", err)
	}
	// A full 1 MiB lease data frame still fits.
	s, err := poolv1.NewLeaseServiceClient(cc).Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustSend(t, s, openFrame("pools/a"))
	recvGranted(t, s)
	frame := bytes.Repeat([]byte{'z'}, MaxDataFrame)
	mustSend(t, s, dataFrame(frame))
	if got := readEcho(t, s, len(frame)); !bytes.Equal(got, frame) {
		t.Fatal("1 MiB frame not echoed")
	}
	mustSend(t, s, releaseFrame(true))
	recvEnded(t, s)

	if _, _, err := New(Config{Manager: e.mgr, MaxRecvMsgSize: 64 << 10}); err == nil {
		t.Fatal("New accepted a MaxRecvMsgSize below a data frame")
	}
	if _, _, err := New(Config{Manager: e.mgr, Auth: &Authenticator{}, AuthFunc: func(ctx context.Context) (context.Context, error) { return ctx, nil }}); err == nil {
		t.Fatal("New accepted both Auth and AuthFunc")
	}
}

// TestAuthLeaseCapSharedWithListeners: a principal's max_leases counts the
// pool listener connections AuthorizeLease grants it together with its
// Lease streams' leases, and an Update that changes the principal revokes
// the grant.
func TestAuthLeaseCapSharedWithListeners(t *testing.T) {
	ps := []Principal{{Name: "capped", Role: RoleClient, TokenSHA256: HashToken("c"), MTLSSubject: "capped", MaxLeases: 1}}
	var a *Authenticator
	e := startAuthEnv(t, ps, nil, func(c *Config) { a = c.Auth })
	e.create(t, "a")
	leaf, err := x509.ParseCertificate(testkit.NewCA(t).Client(t, "capped").TLS.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	lc := poolv1.NewLeaseServiceClient(e.dial(t, nil))
	ctx := bearer(context.Background(), "c")
	openLease := func() poolv1.LeaseService_LeaseClient {
		t.Helper()
		s, err := lc.Lease(ctx)
		if err != nil {
			t.Fatal(err)
		}
		mustSend(t, s, openFrame("pools/a"))
		return s
	}

	g, err := a.AuthorizeLease(leaf, "a")
	if err != nil || g.Holder != "capped" {
		t.Fatalf("listener grant: %+v, %v", g, err)
	}
	if _, err := openLease().Recv(); status.Code(err) != codes.ResourceExhausted || reasonOf(err) != "QUOTA_EXCEEDED" {
		t.Fatalf("a Lease stream while a listener connection holds the cap: %v, want QUOTA_EXCEEDED", err)
	}
	if _, err := a.AuthorizeLease(leaf, "a"); err == nil || !strings.Contains(err.Error(), "max_leases") {
		t.Fatalf("a second listener connection: %v, want the max_leases refusal", err)
	}
	g.Release()
	g.Release() // once only
	s := openLease()
	recvGranted(t, s)
	if _, err := a.AuthorizeLease(leaf, "a"); err == nil {
		t.Fatal("a listener connection while a Lease stream holds the cap was granted")
	}
	mustSend(t, s, releaseFrame(true))
	recvEnded(t, s)

	g, err = a.AuthorizeLease(leaf, "a")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.Revoked.Done():
		t.Fatal("revoked before any update")
	default:
	}
	ps[0].Pools = []string{"b"}
	if err := a.Update(ps); err != nil {
		t.Fatal(err)
	}
	<-g.Revoked.Done() // the principal changed: decide again
	if _, err := a.AuthorizeLease(leaf, "a"); err == nil || !strings.Contains(err.Error(), "may not lease pool a") {
		t.Fatalf("after the update: %v, want refused", err)
	}
	g.Release()
}
