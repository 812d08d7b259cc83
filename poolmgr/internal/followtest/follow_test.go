package followtest

import (
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/store/etcdstore"
	"github.com/poolplane/poolplane/store/etcdstore/etcdtest"

	"github.com/poolplane/poolplane/internal/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.IgnoreGoroutines()...)
}

// propagation is the bound the issue sets for a change to reach every
// replica.
const propagation = time.Second

var prefixes atomic.Int64

// replica is one Manager with its own etcd store over srv, following.
func replica(t *testing.T, srv *etcdtest.Server, prefix string) *poolmgr.Manager {
	t.Helper()
	st, err := etcdstore.New(etcdstore.Config{Endpoints: []string{srv.Endpoint()}, Prefix: prefix, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	m, err := poolmgr.NewManager(poolmgr.ManagerConfig{Store: st, Logger: slog.New(slog.DiscardHandler), Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	if err := m.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	return m
}

func poolState(m *poolmgr.Manager, id string) (poolmgr.State, int, bool) {
	p, err := m.Pool(id)
	if err != nil {
		return 0, 0, false
	}
	return p.State(), p.Config().Limits.MaxConnections, true
}

func TestTwoReplicasFollow(t *testing.T) {
	srv := etcdtest.Start(t)
	prefix := fmt.Sprintf("follow%d", prefixes.Add(1))
	a := replica(t, srv, prefix)
	b := replica(t, srv, prefix)
	ctx := t.Context()
	cfg := poolmgr.Config{Endpoints: []string{"127.0.0.1:1"}}
	cfg.Limits.MaxConnections = 4

	// Create on a: b starts it.
	if _, err := a.Create(ctx, "p1", cfg, poolmgr.WriteOptions{Actor: "a"}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitWithin(t, propagation, "create on b", func() bool {
		st, maxc, ok := poolState(b, "p1")
		return ok && st == poolmgr.StateActive && maxc == 4
	})
	// Update on b: a reconfigures.
	cfg.Limits.MaxConnections = 7
	if _, err := b.Update(ctx, "p1", cfg, 0, poolmgr.WriteOptions{Actor: "b"}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitWithin(t, propagation, "update on a", func() bool {
		_, maxc, ok := poolState(a, "p1")
		return ok && maxc == 7
	})
	// Drain on a: b drains.
	if _, err := a.Drain(ctx, "p1", poolmgr.WriteOptions{Actor: "a"}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitWithin(t, propagation, "drain on b", func() bool {
		st, _, ok := poolState(b, "p1")
		return ok && st == poolmgr.StateDraining
	})
	// Reconnect on b bumps a's generation.
	p, _ := a.Pool("p1")
	gen := p.Generation()
	if _, err := b.Reconnect(ctx, "p1", poolmgr.WriteOptions{Actor: "b"}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitWithin(t, propagation, "reconnect on a", func() bool { return p.Generation() > gen })
	// Apply on a (create p2), delete p1 on b.
	if _, err := a.Apply(ctx, []poolmgr.PoolSpec{{ID: "p1", Config: cfg}, {ID: "p2", Config: cfg}}, poolmgr.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(ctx, "p1", 0, poolmgr.WriteOptions{Actor: "b"}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitWithin(t, propagation, "apply and delete", func() bool {
		_, _, p1a := poolState(a, "p1")
		_, _, p2b := poolState(b, "p2")
		return !p1a && p2b
	})
	// A replica's own change is applied once: its generation did not move
	// twice for one Reconnect.
	p2, _ := a.Pool("p2")
	gen = p2.Generation()
	q, _ := b.Pool("p2")
	bgen := q.Generation() // before the Reconnect, which b may apply at once
	if _, err := a.Reconnect(ctx, "p2", poolmgr.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitWithin(t, propagation, "reconnect on b", func() bool { return q.Generation() > bgen })
	rev, err := a.CurrentRevision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Another change is a barrier: once b sees it, a has seen its own echo.
	if _, err := b.Pause(ctx, "p2", poolmgr.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitWithin(t, propagation, "pause on a", func() bool {
		st, _, ok := poolState(a, "p2")
		return ok && st == poolmgr.StatePaused
	})
	if g := p2.Generation(); g != gen+1 {
		t.Errorf("generation after one own Reconnect (rev %d) = %d, want %d", rev, g, gen+1)
	}
}

// A replica that loses etcd keeps its pools, and reconciles changes made
// meanwhile (by a replica on a healthy store) once etcd returns.
func TestReplicaReconcilesAfterOutage(t *testing.T) {
	srv := etcdtest.Start(t)
	prefix := fmt.Sprintf("outage%d", prefixes.Add(1))
	a := replica(t, srv, prefix)
	b := replica(t, srv, prefix)
	ctx := t.Context()
	cfg := poolmgr.Config{Endpoints: []string{"127.0.0.1:1"}}
	cfg.Limits.MaxConnections = 3
	for _, id := range []string{"keep", "gone"} {
		if _, err := a.Create(ctx, id, cfg, poolmgr.WriteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	testkit.WaitWithin(t, propagation, "create on b", func() bool {
		_, _, k := poolState(b, "keep")
		_, _, g := poolState(b, "gone")
		return k && g
	})

	srv.Stop()
	// b keeps serving what it has.
	if _, _, ok := poolState(b, "keep"); !ok {
		t.Fatal("b lost its pool when etcd stopped")
	}
	srv.Restart(t)

	// Changes after the restart reach b: its watch resumed or it
	// reconciled.
	cfg.Limits.MaxConnections = 9
	testkit.WaitWithin(t, 10*time.Second, "write after restart", func() bool {
		_, err := a.Update(ctx, "keep", cfg, 0, poolmgr.WriteOptions{})
		return err == nil
	})
	if err := a.Delete(ctx, "gone", 0, poolmgr.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitWithin(t, 10*time.Second, "b follows after the outage", func() bool {
		_, maxc, ok := poolState(b, "keep")
		_, _, gone := poolState(b, "gone")
		return ok && maxc == 9 && !gone
	})
}
