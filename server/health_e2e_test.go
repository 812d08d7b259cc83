package server

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// TestHealthForgetsDeletedPools: pools created and deleted leave nothing
// behind in Health: List names the live pools only, and a watcher of a
// deleted pool learns it is unknown.
func TestHealthForgetsDeletedPools(t *testing.T) {
	e := startAuthEnv(t, nil, nil, nil)
	cc := e.dial(t, nil)
	hc := healthpb.NewHealthClient(cc)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	admin := poolv1.NewPoolAdminServiceClient(cc)

	e.create(t, "keep")
	w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "pool/gone-0"})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVICE_UNKNOWN {
		t.Fatalf("watch before the pool exists: %v %v", r, err)
	}
	sync := func() {
		t.Helper()
		if err := e.health.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 40 {
		id := fmt.Sprintf("gone-%d", i)
		e.create(t, id)
		sync()
		if i == 0 {
			if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("watch once the pool exists: %v %v", r, err)
			}
		}
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "pool/" + id}); err != nil {
			t.Fatalf("Check of a live pool: %v", err)
		}
		if _, err := admin.DeletePool(ctx, &poolv1.DeletePoolRequest{Name: "pools/" + id}); err != nil {
			t.Fatal(err)
		}
		sync()
	}
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVICE_UNKNOWN {
		t.Fatalf("watch once the pool is deleted: %v %v", r, err)
	}
	list, err := hc.List(ctx, &healthpb.HealthListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := slices.Sorted(maps.Keys(list.GetStatuses())); !slices.Equal(got, []string{"", "pool/keep"}) {
		t.Fatalf("List = %v, want the process and pool/keep", got)
	}
	_, err = hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "pool/gone-7"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("Check of a deleted pool: %v", err)
	}
}

// TestHealthPoolNamesNeedCredentials: with authentication on, only the
// process status is open; pool statuses and List need a principal that
// may read the pool, unless PublicPoolHealth says otherwise.
func TestHealthPoolNamesNeedCredentials(t *testing.T) {
	ps := append(rolePrincipals(), Principal{Name: "payments", Role: RoleClient, TokenSHA256: HashToken("pay"), Pools: []string{"pay-*"}})
	e := startAuthEnv(t, ps, nil, nil)
	e.create(t, "pay-eu")
	e.create(t, "secret-project")
	hc := healthpb.NewHealthClient(e.dial(t, nil))
	ctx := context.Background()

	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("process status without credentials: %v", err)
	}
	w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("process watch without credentials: %v %v", r, err)
	}
	for _, c := range []context.Context{ctx, bearer(ctx, "wrong")} {
		if _, err := hc.List(c, &healthpb.HealthListRequest{}); status.Code(err) != codes.Unauthenticated {
			t.Errorf("List: %v, want UNAUTHENTICATED", err)
		}
		if _, err := hc.Check(c, &healthpb.HealthCheckRequest{Service: "pool/pay-eu"}); status.Code(err) != codes.Unauthenticated {
			t.Errorf("Check of a pool: %v, want UNAUTHENTICATED", err)
		}
		pw, err := hc.Watch(c, &healthpb.HealthCheckRequest{Service: "pool/pay-eu"})
		if err == nil {
			_, err = pw.Recv()
		}
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("Watch of a pool: %v, want UNAUTHENTICATED", err)
		}
	}

	list, err := hc.List(bearer(ctx, roleTokens[RoleViewer]), &healthpb.HealthListRequest{})
	if err != nil || len(list.GetStatuses()) != 3 {
		t.Fatalf("List as viewer: %v %v", list, err)
	}
	pay := bearer(ctx, "pay")
	list, err = hc.List(pay, &healthpb.HealthListRequest{})
	if got := slices.Sorted(maps.Keys(list.GetStatuses())); err != nil || !slices.Equal(got, []string{"", "pool/pay-eu"}) {
		t.Fatalf("List as a client of pay-*: %v %v", got, err)
	}
	if _, err := hc.Check(pay, &healthpb.HealthCheckRequest{Service: "pool/secret-project"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Check of a pool outside the client's patterns: %v", err)
	}
	if r, err := hc.Check(pay, &healthpb.HealthCheckRequest{Service: "pool/pay-eu"}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Check of the client's pool: %v %v", r, err)
	}

	open := startAuthEnv(t, ps, nil, func(c *Config) { c.PublicPoolHealth = true })
	open.create(t, "pay-eu")
	ohc := healthpb.NewHealthClient(open.dial(t, nil))
	if list, err := ohc.List(ctx, &healthpb.HealthListRequest{}); err != nil || len(list.GetStatuses()) != 2 {
		t.Fatalf("List with PublicPoolHealth: %v %v", list, err)
	}
	if _, err := ohc.Check(ctx, &healthpb.HealthCheckRequest{Service: "pool/pay-eu"}); err != nil {
		t.Fatalf("Check with PublicPoolHealth: %v", err)
	}
}
