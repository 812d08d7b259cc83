package server

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// recvStatus receives from s until the stream ends, within 10s, and
// returns its status code; data and other frames are skipped.
func recvStatus(t *testing.T, recv func() error) codes.Code {
	t.Helper()
	for {
		if err := recv(); err != nil {
			return status.Code(err)
		}
	}
}

// TestRevokedPrincipalLosesStreams: an auth file reload that removes a
// principal ends its open streams, the idle warm Lease stream, the one
// holding a lease (whose connection goes back to no one) and its watches;
// an unchanged principal's streams carry on.
func TestRevokedPrincipalLosesStreams(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t, goleak.IgnoreCurrent()) })
	admin := Principal{Name: "admin", Role: RoleAdmin, TokenSHA256: HashToken("adm")}
	svc := Principal{Name: "svc", Role: RoleClient, TokenSHA256: HashToken("svc"), Pools: []string{"echo*"}}
	var auth *Authenticator
	e := startAuthEnv(t, []Principal{admin, svc}, nil, func(c *Config) { auth = c.Auth })
	e.create(t, "echo") // revision 1
	e.create(t, "seen") // revision 2: the admin's watch below starts after 1
	cc := e.dial(t, nil)
	base, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx := bearer(base, "svc")
	lc := poolv1.NewLeaseServiceClient(cc)

	// A warm stream: one lease done, kept for the next.
	idle := grantedStream(ctx, t, lc, "pools/echo")
	mustSend(t, idle, releaseFrame(true))
	recvEnded(t, idle)
	// A stream holding a lease.
	held := grantedStream(ctx, t, lc, "pools/echo")
	mustSend(t, held, dataFrame([]byte("hi")))
	if got := readEcho(t, held, 2); string(got) != "hi" {
		t.Fatalf("echo %q", got)
	}
	watch, err := poolv1.NewStatsServiceClient(cc).WatchPoolStats(ctx, &poolv1.WatchPoolStatsRequest{Names: []string{"pools/echo"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatal(err)
	}
	adminWatch, err := poolv1.NewPoolAdminServiceClient(cc).WatchPools(bearer(base, "adm"), &poolv1.WatchPoolsRequest{StartRevision: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adminWatch.Recv(); err != nil { // the creation of seen
		t.Fatal(err)
	}

	if err := auth.Update([]Principal{admin}); err != nil {
		t.Fatal(err)
	}
	for name, recv := range map[string]func() error{
		"idle lease stream":    func() error { _, err := idle.Recv(); return err },
		"lease stream holding": func() error { _, err := held.Recv(); return err },
		"stats watch":          func() error { _, err := watch.Recv(); return err },
	} {
		if code := recvStatus(t, recv); code != codes.Unauthenticated {
			t.Errorf("%s of the removed principal ended with %v, want UNAUTHENTICATED", name, code)
		}
	}
	waitInUse(t, e.mgr, 0) // the revoked lease's connection is back

	// The unchanged admin's watch still serves: a change reaches it.
	e.create(t, "echo2")
	if _, err := adminWatch.Recv(); err != nil {
		t.Fatalf("the admin's watch after the reload: %v", err)
	}
	if s, err := lc.Lease(ctx); err == nil {
		_ = s.Send(openFrame("pools/echo")) // io.EOF once the server refused the stream: Recv tells why
		if _, err := s.Recv(); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("a new stream of the removed principal: %v", err)
		}
	}
}

// TestNarrowedPrincipalStreams: a reload that narrows a principal's pool
// patterns ends a stream holding a lease of a pool no longer allowed; an
// idle stream carries on as the new principal, whose next open is checked
// against the new patterns.
func TestNarrowedPrincipalStreams(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t, goleak.IgnoreCurrent()) })
	svc := Principal{Name: "svc", Role: RoleClient, TokenSHA256: HashToken("svc"), Pools: []string{"*"}}
	var auth *Authenticator
	e := startAuthEnv(t, []Principal{svc}, nil, func(c *Config) { auth = c.Auth })
	e.create(t, "a")
	e.create(t, "b")
	cc := e.dial(t, nil)
	base, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx := bearer(base, "svc")
	lc := poolv1.NewLeaseServiceClient(cc)

	idle := grantedStream(ctx, t, lc, "pools/a")
	mustSend(t, idle, releaseFrame(true))
	recvEnded(t, idle)
	heldA := grantedStream(ctx, t, lc, "pools/a")
	heldB := grantedStream(ctx, t, lc, "pools/b")

	narrowed := svc
	narrowed.Pools = []string{"b"}
	if err := auth.Update([]Principal{narrowed}); err != nil {
		t.Fatal(err)
	}
	if code := recvStatus(t, func() error { _, err := heldA.Recv(); return err }); code != codes.PermissionDenied {
		t.Fatalf("the stream holding a lease of a pool no longer allowed ended with %v, want PERMISSION_DENIED", code)
	}
	// The lease of an allowed pool carries on.
	mustSend(t, heldB, dataFrame([]byte("still")))
	if got := readEcho(t, heldB, 5); string(got) != "still" {
		t.Fatalf("echo %q", got)
	}
	mustSend(t, heldB, releaseFrame(true))
	recvEnded(t, heldB)
	// The idle stream leases b, and is refused a.
	mustSend(t, idle, openFrame("pools/b"))
	recvGranted(t, idle)
	mustSend(t, idle, releaseFrame(true))
	recvEnded(t, idle)
	mustSend(t, idle, openFrame("pools/a"))
	if _, err := idle.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("an open of a pool no longer allowed: %v", err)
	}
}

// TestAuthenticatorUpdateRevokes: Update revokes exactly the principals it
// removes or changes; an unchanged entry keeps its principal.
func TestAuthenticatorUpdateRevokes(t *testing.T) {
	keep := Principal{Name: "keep", Role: RoleViewer, TokenSHA256: HashToken("k")}
	change := Principal{Name: "change", Role: RoleClient, TokenSHA256: HashToken("c"), Pools: []string{"a*"}}
	drop := Principal{Name: "drop", Role: RoleAdmin, MTLSSubject: "drop"}
	a, err := NewAuthenticator([]Principal{keep, change, drop})
	if err != nil {
		t.Fatal(err)
	}
	before := map[string]*Principal{}
	for _, p := range a.table.Load().principals {
		before[p.Name] = p
	}
	changed := change
	changed.Pools = []string{"b*"}
	if err := a.Update([]Principal{keep, changed}); err != nil {
		t.Fatal(err)
	}
	revoked := func(p *Principal) bool {
		select {
		case <-p.revokedc():
			return true
		default:
			return false
		}
	}
	if revoked(before["keep"]) || a.table.Load().byToken("k") != before["keep"] {
		t.Fatal("an unchanged principal was revoked or replaced")
	}
	if !revoked(before["change"]) || !revoked(before["drop"]) {
		t.Fatal("a changed or removed principal was not revoked")
	}
	if p := a.table.Load().byToken("c"); p == nil || revoked(p) || p.Pools[0] != "b*" {
		t.Fatalf("the changed principal: %+v", p)
	}
	// A failed update revokes nothing.
	if err := a.Update([]Principal{{Name: "bad"}}); err == nil || revoked(before["keep"]) {
		t.Fatalf("a bad update: %v", err)
	}
}

// grantedStream opens a Lease stream and a lease of pool on it.
func grantedStream(ctx context.Context, t *testing.T, lc poolv1.LeaseServiceClient, pool string) poolv1.LeaseService_LeaseClient {
	t.Helper()
	s, err := lc.Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustSend(t, s, openFrame(pool))
	recvGranted(t, s)
	return s
}
