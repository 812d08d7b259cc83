package followtest

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/store/etcdstore"
	"github.com/poolplane/poolplane/store/etcdstore/etcdtest"

	"github.com/poolplane/poolplane/internal/testkit"
)

// fleetReplica is a following Manager that registers as id and divides
// fleet limits by the live replicas. stop leaves the fleet and closes it.
type fleetReplica struct {
	m    *poolmgr.Manager
	ms   *etcdstore.Membership
	stop func()
}

func newFleetReplica(t *testing.T, srv *etcdtest.Server, prefix, id string) *fleetReplica {
	t.Helper()
	st, err := etcdstore.New(etcdstore.Config{Endpoints: []string{srv.Endpoint()}, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := st.Join(id, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := ms.WaitReady(t.Context()); err != nil {
		t.Fatal(err)
	}
	m, err := poolmgr.NewManager(poolmgr.ManagerConfig{Store: st, Logger: slog.New(slog.DiscardHandler), Follow: true, Replicas: ms})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		if err := m.Close(); err != nil {
			t.Error(err)
		}
		_ = ms.Close()
		_ = st.Close()
	}
	t.Cleanup(stop)
	if err := m.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	return &fleetReplica{m: m, ms: ms, stop: stop}
}

func maxConns(r *fleetReplica, id string) int {
	p, err := r.m.Pool(id)
	if err != nil {
		return -1
	}
	return p.Config().Limits.MaxConnections
}

// Three replicas divide a fleet-scoped max_connections of 10 as 4+3+3; when
// one leaves, the other two take 5 each; a per-replica pool is not divided.
func TestFleetLimitsFollowReplicas(t *testing.T) {
	srv := etcdtest.Start(t)
	prefix := fmt.Sprintf("fleet%d", prefixes.Add(1))
	rs := []*fleetReplica{
		newFleetReplica(t, srv, prefix, "r0"),
		newFleetReplica(t, srv, prefix, "r1"),
		newFleetReplica(t, srv, prefix, "r2"),
	}
	ctx := t.Context()
	cfg := poolmgr.Config{Endpoints: []string{"127.0.0.1:1"}}
	cfg.Limits.MaxConnections = 10
	cfg.Limits.Scope = poolmgr.ScopeFleet
	if _, err := rs[0].m.Create(ctx, "fleet", cfg, poolmgr.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	per := cfg
	per.Limits.Scope = poolmgr.ScopeReplica
	if _, err := rs[1].m.Create(ctx, "per", per, poolmgr.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	shares := func(rs ...*fleetReplica) string {
		var s []int
		for _, r := range rs {
			s = append(s, maxConns(r, "fleet"))
		}
		return fmt.Sprint(s)
	}
	testkit.WaitWithin(t, 5*time.Second, "shares 4+3+3", func() bool { return shares(rs...) == "[4 3 3]" })
	testkit.WaitWithin(t, propagation, "per-replica pool whole on every replica", func() bool {
		for _, r := range rs {
			if maxConns(r, "per") != 10 {
				return false
			}
		}
		return true
	})

	rs[2].stop()
	testkit.WaitWithin(t, 5*time.Second, "shares 5+5 after r2 left", func() bool { return shares(rs[0], rs[1]) == "[5 5]" })

	// A change of the fleet limit is re-divided on every replica.
	cfg.Limits.MaxConnections = 7
	if _, err := rs[1].m.Update(ctx, "fleet", cfg, 0, poolmgr.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitWithin(t, propagation, "shares 4+3 after the update", func() bool { return shares(rs[0], rs[1]) == "[4 3]" })
}
