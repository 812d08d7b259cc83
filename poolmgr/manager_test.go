package poolmgr

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/poolplane/poolplane/store"

	"github.com/poolplane/poolplane/internal/testkit"
)

var _ Store = (*store.Store)(nil)

// eachStore runs f against the in-memory fake and against the real bbolt
// store, each with a goroutine-leak check.
func eachStore(t *testing.T, f func(t *testing.T, st Store)) {
	t.Helper()
	t.Run("mem", func(t *testing.T) {
		t.Cleanup(func() { goleak.VerifyNone(t, goleak.IgnoreCurrent()) })
		st := newMemStore()
		t.Cleanup(func() { _ = st.Close() })
		f(t, st)
	})
	t.Run("bolt", func(t *testing.T) {
		t.Cleanup(func() { goleak.VerifyNone(t, goleak.IgnoreCurrent()) })
		f(t, openBolt(t, filepath.Join(t.TempDir(), "poold.db")))
	})
}

func openBolt(t *testing.T, path string) *store.Store {
	t.Helper()
	st, err := store.Open(path, store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func newTestManager(t *testing.T, st Store) *Manager {
	t.Helper()
	m, err := NewManager(ManagerConfig{Store: st, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	return m
}

// upstream starts a loopback listener that accepts connections and holds
// them open until the peer closes or the test ends. It returns its address.
func upstream(t *testing.T) string {
	t.Helper()
	return testkit.Serve(t, testkit.DiscardConn)
}

func cfgFor(addrs ...string) Config { return Config{Endpoints: addrs} }

func withMax(c Config, n int) Config {
	c.Limits.MaxConnections = n
	return c
}

// waitPool waits, without sleeping, until cond holds for p, or fails the
// test after 30s or at its deadline.
func waitPool(t *testing.T, p *Pool, what string, cond func(Stats) bool) {
	t.Helper()
	testkit.WaitChanged(t, 30*time.Second, "pool "+p.Name()+": "+what, p.Changed,
		func() bool { return cond(p.Stats()) }, func() string { return fmt.Sprintf("%+v", p.Stats()) })
}

// testContext bounds a wait by 30s and by the test binary's deadline.
func testContext(t *testing.T) (context.Context, context.CancelFunc) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	if d, ok := t.Deadline(); ok && d.Add(-time.Second).Before(deadline) {
		deadline = d.Add(-time.Second)
	}
	return context.WithDeadline(context.Background(), deadline)
}

func mustCreate(t *testing.T, m *Manager, id string, cfg Config) PoolInfo {
	t.Helper()
	info, err := m.Create(context.Background(), id, cfg, WriteOptions{Actor: "test"})
	if err != nil {
		t.Fatalf("create %s: %v", id, err)
	}
	return info
}

func storeRevision(t *testing.T, st Store) int64 {
	t.Helper()
	rev, err := st.Revision(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

func TestManagerCRUD(t *testing.T) {
	eachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		m := newTestManager(t, st)
		addr := upstream(t)

		a := mustCreate(t, m, "alpha", cfgFor(addr))
		if a.ID != "alpha" || a.State != StateActive || a.Revision == 0 || a.CreateRevision != a.Revision || a.Generation != 1 {
			t.Fatalf("create: %+v", a)
		}
		if !a.Config.Equal(cfgFor(addr).WithDefaults()) || a.CreateTime.IsZero() || !a.UpdateTime.Equal(a.CreateTime) {
			t.Fatalf("create: config or times: %+v", a)
		}
		if _, err := m.Pool("alpha"); err != nil {
			t.Fatalf("live pool: %v", err)
		}
		if _, err := m.Create(ctx, "alpha", cfgFor(addr), WriteOptions{}); !errors.Is(err, ErrPoolExists) {
			t.Fatalf("create twice: %v", err)
		}
		if _, err := m.Create(ctx, "Bad_ID", cfgFor(addr), WriteOptions{}); !errors.Is(err, ErrInvalidConfig) {
			t.Fatalf("create bad id: %v", err)
		}
		var verr *ValidationError
		if _, err := m.Create(ctx, "beta", withMax(cfgFor(addr), -1), WriteOptions{}); !errors.As(err, &verr) || verr.Violations[0].Field != "limits.max_connections" {
			t.Fatalf("create bad config: %v", err)
		}

		got, err := m.Get(ctx, "alpha")
		if err != nil || got.Revision != a.Revision || !got.Config.Equal(a.Config) {
			t.Fatalf("get: %+v, %v", got, err)
		}
		if _, err := m.Get(ctx, "nope"); !errors.Is(err, ErrPoolNotFound) {
			t.Fatalf("get missing: %v", err)
		}

		// Update with the right revision, then with a stale one.
		u, err := m.Update(ctx, "alpha", withMax(cfgFor(addr), 20), a.Revision, WriteOptions{Actor: "test"})
		if err != nil || u.Revision <= a.Revision || u.CreateRevision != a.CreateRevision || u.Config.Limits.MaxConnections != 20 {
			t.Fatalf("update: %+v, %v", u, err)
		}
		if p, _ := m.Pool("alpha"); p.Config().Limits.MaxConnections != 20 {
			t.Fatalf("live pool not reconfigured: %+v", p.Config().Limits)
		}
		_, err = m.Update(ctx, "alpha", withMax(cfgFor(addr), 30), a.Revision, WriteOptions{})
		var rm *RevisionMismatchError
		if !errors.As(err, &rm) || !errors.Is(err, ErrRevisionMismatch) || rm.Expected != a.Revision || rm.Current != u.Revision || rm.Pool != "alpha" {
			t.Fatalf("stale update: %v", err)
		}
		// An update that changes nothing writes nothing.
		rev := storeRevision(t, st)
		if same, err := m.Update(ctx, "alpha", withMax(cfgFor(addr), 20), 0, WriteOptions{}); err != nil || same.Revision != u.Revision {
			t.Fatalf("no-op update: %+v, %v", same, err)
		}
		if storeRevision(t, st) != rev {
			t.Fatal("no-op update wrote")
		}
		if _, err := m.Update(ctx, "nope", cfgFor(addr), 0, WriteOptions{}); !errors.Is(err, ErrPoolNotFound) {
			t.Fatalf("update missing: %v", err)
		}

		// Delete with a stale revision, then the right one.
		if err := m.Delete(ctx, "alpha", a.Revision, WriteOptions{}); !errors.Is(err, ErrRevisionMismatch) {
			t.Fatalf("stale delete: %v", err)
		}
		if err := m.Delete(ctx, "alpha", u.Revision, WriteOptions{Actor: "test"}); err != nil {
			t.Fatalf("delete: %v", err)
		}
		if _, err := m.Get(ctx, "alpha"); !errors.Is(err, ErrPoolNotFound) {
			t.Fatalf("get deleted: %v", err)
		}
		if _, err := m.Pool("alpha"); !errors.Is(err, ErrPoolNotFound) {
			t.Fatalf("deleted pool still live: %v", err)
		}
		if err := m.Delete(ctx, "alpha", 0, WriteOptions{}); !errors.Is(err, ErrPoolNotFound) {
			t.Fatalf("delete twice: %v", err)
		}
		// The id is free again.
		if b := mustCreate(t, m, "alpha", cfgFor(addr)); b.CreateRevision <= u.Revision {
			t.Fatalf("re-create: %+v", b)
		}
	})
}

func TestManagerListPagination(t *testing.T) {
	eachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		m := newTestManager(t, st)
		addr := upstream(t)
		ids := []string{"e", "a", "d", "c", "b"}
		for _, id := range ids {
			mustCreate(t, m, id, cfgFor(addr))
		}
		var got []string
		token := ""
		pages := 0
		for {
			page, next, err := m.List(ctx, 2, token)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			if len(page) > 2 {
				t.Fatalf("page of %d", len(page))
			}
			for _, p := range page {
				got = append(got, p.ID)
				if p.Revision == 0 || p.Generation != 1 {
					t.Fatalf("list entry: %+v", p)
				}
			}
			if next == "" {
				break
			}
			token = next
		}
		if want := []string{"a", "b", "c", "d", "e"}; !slices.Equal(got, want) || pages != 3 {
			t.Fatalf("listed %v in %d pages, want %v in 3", got, pages, want)
		}
		all, next, err := m.List(ctx, 0, "")
		if err != nil || len(all) != 5 || next != "" {
			t.Fatalf("list all: %d, %q, %v", len(all), next, err)
		}
		if _, _, err := m.List(ctx, 2, "garbage"); !errors.Is(err, ErrInvalidConfig) {
			t.Fatalf("bad token: %v", err)
		}
		if _, _, err := m.List(ctx, -1, ""); !errors.Is(err, ErrInvalidConfig) {
			t.Fatalf("negative page size: %v", err)
		}
	})
}

func TestManagerValidateOnly(t *testing.T) {
	eachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		m := newTestManager(t, st)
		addr := upstream(t)
		vo := WriteOptions{ValidateOnly: true}

		if info, err := m.Create(ctx, "a", cfgFor(addr), vo); err != nil || info.ID != "a" || info.Revision != 0 {
			t.Fatalf("validate-only create: %+v, %v", info, err)
		}
		if _, err := m.Get(ctx, "a"); !errors.Is(err, ErrPoolNotFound) {
			t.Fatalf("validate-only create wrote: %v", err)
		}
		if _, err := m.Pool("a"); !errors.Is(err, ErrPoolNotFound) {
			t.Fatalf("validate-only create started a pool: %v", err)
		}
		if _, err := m.Create(ctx, "a", withMax(cfgFor(addr), 0-5), vo); !errors.Is(err, ErrInvalidConfig) {
			t.Fatalf("validate-only create of a bad config: %v", err)
		}

		a := mustCreate(t, m, "a", cfgFor(addr))
		if _, err := m.Create(ctx, "a", cfgFor(addr), vo); !errors.Is(err, ErrPoolExists) {
			t.Fatalf("validate-only create of an existing pool: %v", err)
		}
		rev := storeRevision(t, st)
		u, err := m.Update(ctx, "a", withMax(cfgFor(addr), 3), 0, vo)
		if err != nil || u.Config.Limits.MaxConnections != 3 || u.Revision != a.Revision {
			t.Fatalf("validate-only update: %+v, %v", u, err)
		}
		if _, err := m.Update(ctx, "a", withMax(cfgFor(addr), 3), a.Revision+100, vo); !errors.Is(err, ErrRevisionMismatch) {
			t.Fatalf("validate-only update with a stale revision: %v", err)
		}
		if d, err := m.Drain(ctx, "a", vo); err != nil || d.State != StateDraining {
			t.Fatalf("validate-only drain: %+v, %v", d, err)
		}
		if _, err := m.Reconnect(ctx, "a", vo); err != nil {
			t.Fatal(err)
		}
		if err := m.Delete(ctx, "a", 0, vo); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Rollback(ctx, "a", a.Revision, vo); err != nil {
			t.Fatal(err)
		}
		plan, err := m.Apply(ctx, []PoolSpec{{ID: "b", Config: cfgFor(addr)}}, ApplyOptions{Prune: true, ValidateOnly: true})
		if err != nil || len(plan.Actions) != 2 || plan.Revision != rev {
			t.Fatalf("validate-only apply: %+v, %v", plan, err)
		}
		if storeRevision(t, st) != rev {
			t.Fatal("validate-only calls wrote to the store")
		}
		got, err := m.Get(ctx, "a")
		if err != nil || got.Revision != a.Revision || got.State != StateActive || got.Config.Limits.MaxConnections != DefaultMaxConnections {
			t.Fatalf("after validate-only calls: %+v, %v", got, err)
		}
		p, err := m.Pool("a")
		if err != nil || p.State() != StateActive || p.Generation() != 1 || p.Config().Limits.MaxConnections != DefaultMaxConnections {
			t.Fatalf("validate-only calls changed the live pool: %v", err)
		}
		if _, err := m.Pool("b"); !errors.Is(err, ErrPoolNotFound) {
			t.Fatalf("validate-only apply started a pool: %v", err)
		}
	})
}

func actionsOf(p Plan) map[string]Action {
	out := make(map[string]Action, len(p.Actions))
	for _, a := range p.Actions {
		out[a.ID] = a.Action
	}
	return out
}

func TestManagerApply(t *testing.T) {
	eachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		m := newTestManager(t, st)
		addr, addr2 := upstream(t), upstream(t)
		warm := cfgFor(addr)
		warm.Limits.MinIdle = 2
		want := []PoolSpec{{ID: "b", Config: warm}, {ID: "a", Config: cfgFor(addr)}}

		plan, err := m.Apply(ctx, want, ApplyOptions{Actor: "ci"})
		if err != nil {
			t.Fatal(err)
		}
		if got := actionsOf(plan); len(got) != 2 || got["a"] != ActionCreate || got["b"] != ActionCreate {
			t.Fatalf("first apply: %+v", plan)
		}
		if plan.Actions[0].ID != "a" {
			t.Fatalf("actions not sorted by id: %+v", plan.Actions)
		}
		for _, id := range []string{"a", "b"} {
			info, err := m.Get(ctx, id)
			if err != nil || info.Revision != plan.Revision || info.CreateRevision != plan.Revision {
				t.Fatalf("%s after apply at %d: %+v, %v", id, plan.Revision, info, err)
			}
		}
		hist, err := m.History(ctx, "a")
		if err != nil || len(hist) != 1 || hist[0].Actor != "ci" || hist[0].Action != ActionCreate {
			t.Fatalf("history after apply: %+v, %v", hist, err)
		}

		// Re-applying the same set changes and writes nothing.
		rev := storeRevision(t, st)
		again, err := m.Apply(ctx, want, ApplyOptions{Actor: "ci", Prune: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range again.Actions {
			if a.Action != ActionUnchanged {
				t.Fatalf("re-apply: %+v", again)
			}
		}
		if again.Revision != rev || storeRevision(t, st) != rev {
			t.Fatalf("re-apply wrote: plan at %d, store at %d, was %d", again.Revision, storeRevision(t, st), rev)
		}

		// Move b to another upstream (retiring its 2 warm connections),
		// create c, prune a (with one leased connection), all at once.
		pb, err := m.Pool("b")
		if err != nil {
			t.Fatal(err)
		}
		waitPool(t, pb, "2 idle connections", func(s Stats) bool { return s.Idle == 2 })
		pa, err := m.Pool("a")
		if err != nil {
			t.Fatal(err)
		}
		lease, err := pa.Acquire(ctx, "test")
		if err != nil {
			t.Fatal(err)
		}
		defer lease.Release(false)
		moved := warm
		moved.Endpoints = []string{addr2}
		moved.Limits.MaxConnections = 5
		plan, err = m.Apply(ctx, []PoolSpec{{ID: "b", Config: moved}, {ID: "c", Config: cfgFor(addr2)}}, ApplyOptions{Actor: "ci", Prune: true})
		if err != nil {
			t.Fatal(err)
		}
		wantPlan := []PlannedAction{
			{ID: "a", Action: ActionDelete, Retired: Retired{Idle: 0, Leased: 1}},
			{ID: "b", Action: ActionUpdate, ChangedFields: []string{"endpoints", "limits.max_connections", "limits.max_idle"}, Retired: Retired{Idle: 2}},
			{ID: "c", Action: ActionCreate},
		}
		if fmt.Sprint(plan.Actions) != fmt.Sprint(wantPlan) {
			t.Fatalf("plan:\n got %+v\nwant %+v", plan.Actions, wantPlan)
		}
		b, err := m.Get(ctx, "b")
		if err != nil || b.Revision != plan.Revision || b.CreateRevision == plan.Revision || b.Generation != 2 {
			t.Fatalf("b after apply at %d: %+v, %v", plan.Revision, b, err)
		}
		if c, err := m.Get(ctx, "c"); err != nil || c.Revision != plan.Revision {
			t.Fatalf("c after apply at %d: %+v, %v", plan.Revision, c, err)
		}
		if _, err := m.Get(ctx, "a"); !errors.Is(err, ErrPoolNotFound) {
			t.Fatalf("a not pruned: %v", err)
		}
		if h, _ := m.History(ctx, "a"); len(h) != 2 || !h[1].Deleted || h[1].Revision != plan.Revision {
			t.Fatalf("history of pruned a: %+v", h)
		}
		// The lease of the pruned pool is not cut.
		select {
		case <-lease.Done():
			t.Fatal("pruning a pool cut its lease")
		default:
		}
		if _, err := lease.NetConn().Write([]byte("still here")); err != nil {
			t.Fatalf("write on the lease of a pruned pool: %v", err)
		}

		// Without Prune, pools not in the set are left alone.
		plan, err = m.Apply(ctx, []PoolSpec{{ID: "c", Config: cfgFor(addr2)}}, ApplyOptions{})
		if err != nil || len(plan.Actions) != 1 || plan.Actions[0].Action != ActionUnchanged {
			t.Fatalf("apply without prune: %+v, %v", plan, err)
		}
		if _, err := m.Get(ctx, "b"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestManagerApplyInvalid(t *testing.T) {
	eachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		m := newTestManager(t, st)
		addr := upstream(t)
		rev := storeRevision(t, st)
		_, err := m.Apply(ctx, []PoolSpec{
			{ID: "ok", Config: cfgFor(addr)},
			{ID: "bad", Config: withMax(cfgFor(addr), 0-1)},
			{ID: "ok", Config: cfgFor(addr)},
			{ID: "Nope", Config: Config{}},
		}, ApplyOptions{Prune: true})
		var verr *ValidationError
		if !errors.As(err, &verr) {
			t.Fatalf("apply of invalid pools: %v", err)
		}
		var fields []string
		for _, v := range verr.Violations {
			fields = append(fields, v.Field)
		}
		want := []string{"pools[1].limits.max_connections", "pools[2].name", "pools[3].name", "pools[3].endpoints"}
		for _, f := range want {
			if !slices.Contains(fields, f) {
				t.Errorf("violations %v lack %s", fields, f)
			}
		}
		if storeRevision(t, st) != rev {
			t.Fatal("an invalid apply wrote")
		}
		if _, err := m.Pool("ok"); !errors.Is(err, ErrPoolNotFound) {
			t.Fatalf("an invalid apply started a pool: %v", err)
		}
	})
}

// racingStore makes a concurrent change just before the first Txn.
type racingStore struct {
	Store
	once   sync.Once
	before func()
}

func (s *racingStore) Txn(ctx context.Context, ops []store.Op, actor string) (int64, error) {
	s.once.Do(s.before)
	return s.Store.Txn(ctx, ops, actor)
}

func TestManagerApplyConcurrentChange(t *testing.T) {
	eachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		addr := upstream(t)
		rs := &racingStore{Store: st}
		m := newTestManager(t, rs)
		mustCreate(t, m, "a", cfgFor(addr))

		// Another writer (another replica, in time) changes a between the
		// plan and the commit.
		rs.before = func() {
			kv, err := st.Get(ctx, poolKey("a"))
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := st.Put(ctx, poolKey("a"), kv.Value, store.Any(), "other"); err != nil {
				t.Error(err)
			}
		}
		rev := storeRevision(t, st)
		_, err := m.Apply(ctx, []PoolSpec{
			{ID: "a", Config: withMax(cfgFor(addr), 3)},
			{ID: "b", Config: cfgFor(addr)},
		}, ApplyOptions{})
		var rm *RevisionMismatchError
		if !errors.Is(err, ErrRevisionMismatch) || !errors.As(err, &rm) || rm.Pool != "a" {
			t.Fatalf("apply racing a change: %v", err)
		}
		if got := storeRevision(t, st); got != rev+1 {
			t.Fatalf("store at %d, want %d (only the other writer's change)", got, rev+1)
		}
		if _, err := m.Get(ctx, "b"); !errors.Is(err, ErrPoolNotFound) {
			t.Fatalf("aborted apply created b: %v", err)
		}
		if _, err := m.Pool("b"); !errors.Is(err, ErrPoolNotFound) {
			t.Fatalf("aborted apply started b: %v", err)
		}
		if p, _ := m.Pool("a"); p.Config().Limits.MaxConnections != DefaultMaxConnections {
			t.Fatal("aborted apply reconfigured a")
		}

		// A pool created concurrently aborts the apply too.
		rs.once = sync.Once{}
		rs.before = func() {
			if _, err := m.Create(ctx, "c", cfgFor(addr), WriteOptions{}); err != nil {
				t.Error(err)
			}
		}
		// Create takes the write lock Apply holds: race it through the
		// store directly instead.
		rs.before = func() {
			b, err := encodeRecord(record{Config: cfgFor(addr).WithDefaults(), Op: ActionCreate}, nil)
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := st.Put(ctx, poolKey("c"), b, store.Absent(), "other"); err != nil {
				t.Error(err)
			}
		}
		if _, err := m.Apply(ctx, []PoolSpec{{ID: "c", Config: cfgFor(addr)}}, ApplyOptions{}); !errors.Is(err, ErrRevisionMismatch) {
			t.Fatalf("apply racing a create: %v", err)
		}
	})
}

func TestManagerHistoryRollback(t *testing.T) {
	eachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		m := newTestManager(t, st)
		addr, addr2 := upstream(t), upstream(t)
		o := WriteOptions{Actor: "alice"}

		v1 := mustCreate(t, m, "a", cfgFor(addr))
		v2, err := m.Update(ctx, "a", cfgFor(addr2), 0, WriteOptions{Actor: "bob"})
		if err != nil {
			t.Fatal(err)
		}
		v3, err := m.Drain(ctx, "a", o)
		if err != nil {
			t.Fatal(err)
		}
		hist, err := m.History(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		type row struct {
			rev    int64
			action Action
			actor  string
			ep     string
			state  State
		}
		var got []row
		for _, h := range hist {
			got = append(got, row{h.Revision, h.Action, h.Actor, h.Config.Endpoints[0], h.State})
		}
		want := []row{
			{v1.Revision, ActionCreate, "test", addr, StateActive},
			{v2.Revision, ActionUpdate, "bob", addr2, StateActive},
			{v3.Revision, ActionDrain, "alice", addr2, StateDraining},
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("history:\n got %v\nwant %v", got, want)
		}

		// Roll back to v1's config: a new revision, state kept, live pool
		// back on addr with a new generation.
		r, err := m.Rollback(ctx, "a", v1.Revision, o)
		if err != nil {
			t.Fatal(err)
		}
		if r.Revision <= v3.Revision || r.Config.Endpoints[0] != addr || r.State != StateDraining || r.CreateRevision != v1.CreateRevision {
			t.Fatalf("rollback: %+v", r)
		}
		p, err := m.Pool("a")
		if err != nil || p.Config().Endpoints[0] != addr || p.State() != StateDraining || p.Generation() != 3 {
			t.Fatalf("live pool after rollback: %v", err)
		}
		hist, _ = m.History(ctx, "a")
		if last := hist[len(hist)-1]; last.Action != ActionRollback || last.Actor != "alice" || last.Revision != r.Revision {
			t.Fatalf("rollback history entry: %+v", last)
		}
		// Rolling back to the config in place writes nothing.
		if same, err := m.Rollback(ctx, "a", v1.Revision, o); err != nil || same.Revision != r.Revision {
			t.Fatalf("no-op rollback: %+v, %v", same, err)
		}

		// Delete, then roll back to v2: the pool comes back, ACTIVE.
		if err := m.Delete(ctx, "a", 0, o); err != nil {
			t.Fatal(err)
		}
		hist, _ = m.History(ctx, "a")
		del := hist[len(hist)-1]
		if !del.Deleted || del.Action != ActionDelete || del.Actor != "alice" {
			t.Fatalf("delete history entry: %+v", del)
		}
		back, err := m.Rollback(ctx, "a", v2.Revision, WriteOptions{Actor: "carol"})
		if err != nil {
			t.Fatal(err)
		}
		if back.Config.Endpoints[0] != addr2 || back.State != StateActive || back.CreateRevision != back.Revision || back.Generation != 1 {
			t.Fatalf("rollback of a deleted pool: %+v", back)
		}
		if p, err := m.Pool("a"); err != nil || p.State() != StateActive {
			t.Fatalf("re-created pool not live: %v", err)
		}

		// Rolling back to the deletion, or before the pool, is refused.
		if _, err := m.Rollback(ctx, "a", del.Revision, o); !errors.Is(err, ErrInvalidConfig) {
			t.Fatalf("rollback to a deletion: %v", err)
		}
		mustCreate(t, m, "late", cfgFor(addr))
		if _, err := m.Rollback(ctx, "late", v1.Revision, o); !errors.Is(err, ErrRevisionNotFound) {
			t.Fatalf("rollback to before the pool existed: %v", err)
		}
		if _, err := m.Rollback(ctx, "nope", v1.Revision, o); !errors.Is(err, ErrRevisionNotFound) {
			t.Fatalf("rollback of an unknown pool: %v", err)
		}
		if _, err := m.History(ctx, "nope"); !errors.Is(err, ErrPoolNotFound) {
			t.Fatalf("history of an unknown pool: %v", err)
		}
	})
}

func TestManagerLifecycle(t *testing.T) {
	eachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		m := newTestManager(t, st)
		addr := upstream(t)
		a := mustCreate(t, m, "a", cfgFor(addr))
		p, err := m.Pool("a")
		if err != nil {
			t.Fatal(err)
		}
		rev := a.Revision
		for _, step := range []struct {
			verb  func(context.Context, string, WriteOptions) (PoolInfo, error)
			state State
		}{
			{m.Pause, StatePaused},
			{m.Drain, StateDraining},
			{m.Pause, StatePaused}, // from draining
			{m.Resume, StateActive},
			{m.Drain, StateDraining},
			{m.Resume, StateActive},
		} {
			info, err := step.verb(ctx, "a", WriteOptions{Actor: "op"})
			if err != nil {
				t.Fatal(err)
			}
			if info.State != step.state || info.Revision <= rev || p.State() != step.state {
				t.Fatalf("want %v: got stored %v (revision %d after %d), live %v", step.state, info.State, info.Revision, rev, p.State())
			}
			rev = info.Revision
		}
		// A verb that changes nothing writes nothing.
		if info, err := m.Resume(ctx, "a", WriteOptions{}); err != nil || info.Revision != rev {
			t.Fatalf("no-op resume: %+v, %v", info, err)
		}

		r, err := m.Reconnect(ctx, "a", WriteOptions{Actor: "op"})
		if err != nil || r.Generation != 2 || r.Revision <= rev || p.Generation() != 2 {
			t.Fatalf("reconnect: %+v, %v", r, err)
		}
		if err := m.WaitGeneration(ctx, "a", 2); err != nil {
			t.Fatal(err)
		}
		if err := m.WaitDrained(ctx, "a"); err != nil {
			t.Fatal(err)
		}
		hist, _ := m.History(ctx, "a")
		if last := hist[len(hist)-1]; last.Action != ActionReconnect || last.Actor != "op" || last.State != StateActive {
			t.Fatalf("reconnect history entry: %+v", last)
		}
		if _, err := m.Pause(ctx, "nope", WriteOptions{}); !errors.Is(err, ErrPoolNotFound) {
			t.Fatalf("pause of an unknown pool: %v", err)
		}
		if err := m.WaitDrained(ctx, "nope"); !errors.Is(err, ErrPoolNotFound) {
			t.Fatalf("wait of an unknown pool: %v", err)
		}
	})
}

func TestManagerLeases(t *testing.T) {
	eachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		m := newTestManager(t, st)
		addr := upstream(t)
		mustCreate(t, m, "a", cfgFor(addr))
		mustCreate(t, m, "b", cfgFor(addr))
		pa, _ := m.Pool("a")
		pb, _ := m.Pool("b")
		ca, err := pa.Acquire(ctx, "svc-1")
		if err != nil {
			t.Fatal(err)
		}
		defer ca.Release(false)
		cb, err := pb.Acquire(ctx, "svc-2")
		if err != nil {
			t.Fatal(err)
		}
		defer cb.Release(false)

		all, err := m.Leases(ctx, "")
		if err != nil || len(all) != 2 || all[0].Pool != "a" || all[1].Pool != "b" || all[0].Holder != "svc-1" {
			t.Fatalf("all leases: %+v, %v", all, err)
		}
		onlyB, err := m.Leases(ctx, "b")
		if err != nil || len(onlyB) != 1 || onlyB[0].ID != cb.Info().LeaseID {
			t.Fatalf("leases of b: %+v, %v", onlyB, err)
		}
		if _, err := m.Leases(ctx, "nope"); !errors.Is(err, ErrPoolNotFound) {
			t.Fatalf("leases of an unknown pool: %v", err)
		}

		// Deleting b drains it but keeps its lease, which stays listed and
		// revocable until released.
		if err := m.Delete(ctx, "b", 0, WriteOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := pb.Acquire(ctx, "late"); !errors.Is(err, ErrDraining) {
			t.Fatalf("acquire from a deleted pool: %v", err)
		}
		select {
		case <-cb.Done():
			t.Fatal("delete cut a lease")
		default:
		}
		if all, _ := m.Leases(ctx, ""); len(all) != 2 {
			t.Fatalf("leases after delete: %+v", all)
		}
		if err := m.RevokeLease(ctx, cb.Info().LeaseID); err != nil {
			t.Fatal(err)
		}
		<-cb.Done()
		if err := m.RevokeLease(ctx, "b-00000000-999"); !errors.Is(err, ErrLeaseNotFound) {
			t.Fatalf("revoke of an unknown lease: %v", err)
		}
		// With its last lease gone, the deleted pool closes.
		if err := m.RevokeLease(ctx, ca.Info().LeaseID); err != nil {
			t.Fatal(err)
		}
		waitRetired(t, m)
	})
}

// waitRetired waits until every retiring pool has closed.
func waitRetired(t *testing.T, m *Manager) {
	t.Helper()
	ctx, cancel := testContext(t)
	defer cancel()
	m.mu.Lock()
	var dones []chan struct{}
	for _, donec := range m.retiring {
		dones = append(dones, donec)
	}
	m.mu.Unlock()
	for _, donec := range dones {
		select {
		case <-donec:
		case <-ctx.Done():
			t.Fatal("a retiring pool did not close")
		}
	}
}

func TestManagerLoadAfterReopen(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t, goleak.IgnoreCurrent()) })
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "poold.db")
	addr := upstream(t)

	st, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewManager(ManagerConfig{Store: st, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	full := fullRecord().Config
	full.Endpoints = []string{addr}
	full.TLS = TLSConfig{}
	full.HealthCheck = HealthCheck{Kind: HealthTCP}
	full = full.WithDefaults()
	want := map[string]PoolInfo{}
	for id, c := range map[string]Config{"active": cfgFor(addr), "paused": withMax(cfgFor(addr), 3), "draining": cfgFor(addr), "full": full} {
		want[id] = mustCreate(t, m, id, c)
	}
	var err2 error
	if want["paused"], err2 = m.Pause(ctx, "paused", WriteOptions{}); err2 != nil {
		t.Fatal(err2)
	}
	if want["draining"], err2 = m.Drain(ctx, "draining", WriteOptions{}); err2 != nil {
		t.Fatal(err2)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(ctx, "active"); !errors.Is(err, ErrPoolClosed) {
		t.Fatalf("get after close: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st = openBolt(t, path)
	m = newTestManager(t, st)
	if err := m.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Load(ctx); err == nil {
		t.Fatal("second Load succeeded")
	}
	got, _, err := m.List(ctx, 0, "")
	if err != nil || len(got) != len(want) {
		t.Fatalf("list after reload: %d pools, %v", len(got), err)
	}
	for _, g := range got {
		w := want[g.ID]
		w.Generation = 1
		if !g.Config.Equal(w.Config) || g.State != w.State || g.Revision != w.Revision || g.CreateRevision != w.CreateRevision ||
			!g.CreateTime.Equal(w.CreateTime) || !g.UpdateTime.Equal(w.UpdateTime) || g.Generation != 1 {
			t.Errorf("pool %s after reload:\n got %+v\nwant %+v", g.ID, g, w)
		}
		p, err := m.Pool(g.ID)
		if err != nil || p.State() != w.State || !p.Config().Equal(w.Config) {
			t.Errorf("live pool %s after reload: %v", g.ID, err)
		}
	}
}

func TestManagerLoadReportsBadRecords(t *testing.T) {
	eachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		addr := upstream(t)
		good, err := encodeRecord(record{Config: cfgFor(addr).WithDefaults()}, nil)
		if err != nil {
			t.Fatal(err)
		}
		for key, val := range map[string]string{
			"pools/good":    string(good),
			"pools/future":  `{"v":99}`,
			"pools/invalid": `{"v":1,"state":"ACTIVE","config":{"reuse_policy":"REUSE","idle_order":"LIFO","health_check":{"kind":"NONE"}}}`,
		} {
			if _, err := st.Put(ctx, key, []byte(val), store.Absent(), "seed"); err != nil {
				t.Fatal(err)
			}
		}
		m := newTestManager(t, st)
		err = m.Load(ctx)
		if err == nil || !errors.Is(err, errRecord) || !errors.Is(err, ErrInvalidConfig) {
			t.Fatalf("load: %v", err)
		}
		if _, err := m.Pool("good"); err != nil {
			t.Fatalf("good pool not started: %v", err)
		}
		// A broken pool can be repaired or deleted.
		if _, err := m.Update(ctx, "invalid", cfgFor(addr), 0, WriteOptions{}); err != nil {
			t.Fatalf("repair: %v", err)
		}
		if _, err := m.Pool("invalid"); err != nil {
			t.Fatalf("repaired pool not started: %v", err)
		}
		if err := m.Delete(ctx, "future", 0, WriteOptions{}); err != nil {
			t.Fatalf("delete of an undecodable record: %v", err)
		}
	})
}

func TestManagerWatch(t *testing.T) {
	eachStore(t, func(t *testing.T, st Store) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		m := newTestManager(t, st)
		addr := upstream(t)
		before := mustCreate(t, m, "early", cfgFor(addr))

		from, err := m.CurrentRevision(ctx)
		if err != nil || from != before.Revision {
			t.Fatalf("current revision %d, %v; want %d", from, err, before.Revision)
		}
		ch, err := m.Watch(ctx, from)
		if err != nil {
			t.Fatal(err)
		}
		c := mustCreate(t, m, "a", cfgFor(addr))
		u, err := m.Update(ctx, "a", withMax(cfgFor(addr), 4), 0, WriteOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pz, err := m.Pause(ctx, "a", WriteOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Delete(ctx, "a", 0, WriteOptions{}); err != nil {
			t.Fatal(err)
		}
		type ev struct {
			rev   int64
			typ   EventType
			max   int
			state State
		}
		want := []ev{
			{c.Revision, EventPut, DefaultMaxConnections, StateActive},
			{u.Revision, EventPut, 4, StateActive},
			{pz.Revision, EventPut, 4, StatePaused},
			{pz.Revision + 1, EventDelete, 4, StatePaused},
		}
		for i, w := range want {
			e, ok := <-ch
			if !ok {
				t.Fatalf("watch closed after %d events", i)
			}
			got := ev{e.Revision, e.Type, e.Info.Config.Limits.MaxConnections, e.Info.State}
			if got != w || e.Info.ID != "a" {
				t.Fatalf("event %d: got %+v (%+v), want %+v", i, got, e.Info, w)
			}
		}
		cancel()
		for range ch {
		}

		// From 0, every change is replayed; Close ends the watch.
		ch, err = m.Watch(context.Background(), 0)
		if err != nil {
			t.Fatal(err)
		}
		if e := <-ch; e.Info.ID != "early" || e.Revision != before.Revision {
			t.Fatalf("first replayed event: %+v", e)
		}
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		for range ch {
		}
		if _, err := m.Watch(context.Background(), 0); !errors.Is(err, ErrPoolClosed) {
			t.Fatalf("watch after close: %v", err)
		}
	})
}

func TestManagerClose(t *testing.T) {
	eachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		m := newTestManager(t, st)
		addr := upstream(t)
		mustCreate(t, m, "a", cfgFor(addr))
		p, _ := m.Pool("a")
		c, err := p.Acquire(ctx, "svc")
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		if err := m.Close(); err != nil {
			t.Fatalf("second close: %v", err)
		}
		<-c.Done() // Close ends leases (Pool.Close semantics)
		c.Release(true)
		if _, err := p.Acquire(ctx, "svc"); !errors.Is(err, ErrPoolClosed) {
			t.Fatalf("acquire after close: %v", err)
		}
		for name, err := range map[string]error{
			"pool":   func() error { _, err := m.Pool("a"); return err }(),
			"get":    func() error { _, err := m.Get(ctx, "a"); return err }(),
			"list":   func() error { _, _, err := m.List(ctx, 0, ""); return err }(),
			"create": func() error { _, err := m.Create(ctx, "b", cfgFor(addr), WriteOptions{}); return err }(),
			"update": func() error { _, err := m.Update(ctx, "a", cfgFor(addr), 0, WriteOptions{}); return err }(),
			"delete": m.Delete(ctx, "a", 0, WriteOptions{}),
			"apply":  func() error { _, err := m.Apply(ctx, nil, ApplyOptions{}); return err }(),
			"leases": func() error { _, err := m.Leases(ctx, ""); return err }(),
			"revoke": m.RevokeLease(ctx, "x"),
		} {
			if !errors.Is(err, ErrPoolClosed) {
				t.Errorf("%s after close: %v", name, err)
			}
		}
	})
}

func TestManagerConcurrentWrites(t *testing.T) {
	eachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		m := newTestManager(t, st)
		addr := upstream(t)
		mustCreate(t, m, "a", cfgFor(addr))
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range 5 {
					if _, err := m.Update(ctx, "a", withMax(cfgFor(addr), 1+i*5+j), 0, WriteOptions{}); err != nil {
						t.Error(err)
					}
					if _, err := m.Get(ctx, "a"); err != nil {
						t.Error(err)
					}
				}
			}()
		}
		wg.Wait()
		// The live pool follows the last committed write.
		info, err := m.Get(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		p, _ := m.Pool("a")
		if !p.Config().Equal(info.Config) {
			t.Fatalf("live config %+v, stored %+v", p.Config().Limits, info.Config.Limits)
		}
	})
}
