package server

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/store"
)

// wantAllowed is the expected authorization matrix, written out by hand
// independently of methodPermissions: the roles that may call each method
// of each poolplane service. A new RPC has no entry here and fails
// TestRolesWalkEveryMethod until someone decides who may call it.
var wantAllowed = map[string][]Role{
	"/poolplane.v1.PoolAdminService/CreatePool":        {RoleAdmin},
	"/poolplane.v1.PoolAdminService/GetPool":           {RoleAdmin, RoleOperator, RoleViewer},
	"/poolplane.v1.PoolAdminService/ListPools":         {RoleAdmin, RoleOperator, RoleViewer},
	"/poolplane.v1.PoolAdminService/UpdatePool":        {RoleAdmin},
	"/poolplane.v1.PoolAdminService/DeletePool":        {RoleAdmin},
	"/poolplane.v1.PoolAdminService/ApplyPools":        {RoleAdmin},
	"/poolplane.v1.PoolAdminService/ListPoolRevisions": {RoleAdmin, RoleOperator, RoleViewer},
	"/poolplane.v1.PoolAdminService/RollbackPool":      {RoleAdmin},
	"/poolplane.v1.PoolAdminService/DrainPool":         {RoleAdmin, RoleOperator},
	"/poolplane.v1.PoolAdminService/PausePool":         {RoleAdmin, RoleOperator},
	"/poolplane.v1.PoolAdminService/ResumePool":        {RoleAdmin, RoleOperator},
	"/poolplane.v1.PoolAdminService/ReconnectPool":     {RoleAdmin, RoleOperator},
	"/poolplane.v1.PoolAdminService/ListLeases":        {RoleAdmin, RoleOperator, RoleViewer},
	"/poolplane.v1.PoolAdminService/ListReplicas":      {RoleAdmin, RoleOperator, RoleViewer},
	"/poolplane.v1.PoolAdminService/RevokeLease":       {RoleAdmin, RoleOperator},
	"/poolplane.v1.PoolAdminService/WatchPools":        {RoleAdmin, RoleOperator, RoleViewer},
	"/poolplane.v1.PoolAdminService/BackupDatabase":    {RoleAdmin},
	"/poolplane.v1.LeaseService/Lease":                 {RoleAdmin, RoleClient},
	"/poolplane.v1.StatsService/GetPoolStats":          {RoleAdmin, RoleOperator, RoleViewer, RoleClient},
	"/poolplane.v1.StatsService/WatchPoolStats":        {RoleAdmin, RoleOperator, RoleViewer, RoleClient},
}

// serviceMethods lists the full method names of a service.
func serviceMethods(sd grpc.ServiceDesc) []string {
	var out []string
	for _, m := range sd.Methods {
		out = append(out, "/"+sd.ServiceName+"/"+m.MethodName)
	}
	for _, s := range sd.Streams {
		out = append(out, "/"+sd.ServiceName+"/"+s.StreamName)
	}
	return out
}

func TestRolesWalkEveryMethod(t *testing.T) {
	descs := []grpc.ServiceDesc{poolv1.PoolAdminService_ServiceDesc, poolv1.LeaseService_ServiceDesc, poolv1.StatsService_ServiceDesc}
	seen := 0
	for _, sd := range descs {
		for _, m := range serviceMethods(sd) {
			seen++
			want, ok := wantAllowed[m]
			if !ok {
				t.Errorf("%s: no expected roles in wantAllowed: decide who may call it, in methodPermissions and here", m)
				continue
			}
			if _, ok := methodPermissions[m]; !ok {
				t.Errorf("%s: no rule in methodPermissions: it is denied to everyone", m)
			}
			for _, r := range roles {
				allowed := authorize(ContextWithPrincipal(context.Background(), &Principal{Name: "p", Role: r}), m) == nil
				if allowed != contains(want, r) {
					t.Errorf("%s as %s: allowed=%v, want %v", m, r, allowed, !allowed)
				}
			}
		}
	}
	if seen != len(wantAllowed) {
		t.Errorf("wantAllowed has %d methods, the services %d: stale entries", len(wantAllowed), seen)
	}
}

func contains(rs []Role, r Role) bool {
	for _, x := range rs {
		if x == r {
			return true
		}
	}
	return false
}

// TestEveryRegisteredMethodHasAPermission walks what New actually
// registers (health and reflection included).
func TestEveryRegisteredMethodHasAPermission(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	mgr, err := poolmgr.NewManager(poolmgr.ManagerConfig{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	defer mgr.Close()
	srv, _, err := New(Config{Manager: mgr})
	if err != nil {
		t.Fatal(err)
	}
	for name, info := range srv.GetServiceInfo() {
		for _, m := range info.Methods {
			full := "/" + name + "/" + m.Name
			if _, ok := methodPermissions[full]; !ok {
				t.Errorf("%s is registered but has no rule in methodPermissions", full)
			}
		}
	}
	for m := range methodPermissions {
		svc := strings.Split(m, "/")[1]
		if _, ok := srv.GetServiceInfo()[svc]; !ok {
			t.Errorf("rule for %s, whose service is not registered", m)
		}
	}
}

func TestUnknownMethodDenied(t *testing.T) {
	ctx := ContextWithPrincipal(context.Background(), &Principal{Name: "root", Role: RoleAdmin})
	err := authorize(ctx, "/poolplane.v1.PoolAdminService/DropEverything")
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("unknown method as admin: %v, want PermissionDenied", err)
	}
	if err := authorize(context.Background(), healthpb.Health_Check_FullMethodName); err != nil {
		t.Fatalf("no principal (auth off): %v", err)
	}
}

func TestPrincipalPools(t *testing.T) {
	p := &Principal{Name: "c", Role: RoleClient, Pools: []string{"pay-*", "redis"}}
	for id, want := range map[string]bool{"pay-eu": true, "pay-": true, "redis": true, "redis2": false, "api": false} {
		if got := p.allowsPool(id); got != want {
			t.Errorf("allowsPool(%q) = %v, want %v", id, got, want)
		}
	}
	if !(&Principal{Role: RoleClient}).allowsPool("anything") {
		t.Error("no patterns: every pool")
	}
}

func TestParseAuthFile(t *testing.T) {
	h := HashToken("s3cret")
	good := "principals:\n- {name: a, token_sha256: " + h + ", role: admin}\n" +
		"- {name: c, mtls_san: spiffe://x/c, role: client, pools: ['pools/pay-*'], max_leases: 3}\n"
	ps, err := ParseAuthFile([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[1].MaxLeases != 3 {
		t.Fatalf("parsed %+v", ps)
	}
	a, err := NewAuthenticator(ps)
	if err != nil {
		t.Fatal(err)
	}
	if p := a.table.Load().byToken("s3cret"); p == nil || p.Name != "a" {
		t.Fatalf("byToken = %v", p)
	}
	if p := a.table.Load().byToken("s3cre"); p != nil {
		t.Fatalf("wrong token matched %v", p)
	}
	if a.table.Load().principals[1].Pools[0] != "pay-*" {
		t.Fatal("the pools/ prefix is not stripped")
	}
	for name, tc := range map[string]struct{ yaml, want string }{
		"empty":          {"principals: []\n", "no principals"},
		"no name":        {"principals:\n- {token_sha256: " + h + ", role: admin}\n", "name is required"},
		"duplicate name": {"principals:\n- {name: a, token_sha256: " + h + ", role: admin}\n- {name: a, mtls_subject: x, role: viewer}\n", "duplicate name"},
		"raw token":      {"principals:\n- {name: a, token_sha256: s3cret, role: admin}\n", "not the token"},
		"no identity":    {"principals:\n- {name: a, role: admin}\n", "needs token_sha256"},
		"bad role":       {"principals:\n- {name: a, token_sha256: " + h + ", role: root}\n", "role \"root\""},
		"admin pools":    {"principals:\n- {name: a, token_sha256: " + h + ", role: admin, pools: [x]}\n", "client role only"},
		"bad pattern":    {"principals:\n- {name: a, token_sha256: " + h + ", role: client, pools: ['[']}\n", "not a glob"},
		"same token":     {"principals:\n- {name: a, token_sha256: " + h + ", role: admin}\n- {name: b, token_sha256: " + strings.ToUpper(h) + ", role: viewer}\n", "same token_sha256 as a"},
		"unknown field":  {"principals:\n- {name: a, token: s3cret, role: admin}\n", "field token not found"},
		"negative cap":   {"principals:\n- {name: a, token_sha256: " + h + ", role: client, max_leases: -1}\n", "max_leases"},
	} {
		if _, err := ParseAuthFile([]byte(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want it to contain %q", name, err, tc.want)
		}
	}
}

func TestLeaseCaps(t *testing.T) {
	var c leaseCaps
	p := &Principal{Name: "c", Role: RoleClient, MaxLeases: 2}
	a, err := c.take(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.take(p); err != nil {
		t.Fatal(err)
	}
	_, err = c.take(p)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "max_leases") {
		t.Fatalf("third lease: %v", err)
	}
	a.Add(-1)
	// A reloaded principal of the same name shares the count.
	if _, err := c.take(&Principal{Name: "c", Role: RoleClient, MaxLeases: 2}); err != nil {
		t.Fatalf("after a release: %v", err)
	}
	if n, err := c.take(&Principal{Name: "u", Role: RoleClient}); n != nil || err != nil {
		t.Fatalf("no cap: %v %v", n, err)
	}
}
