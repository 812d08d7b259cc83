package poolmgr

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/poolplane/poolplane/store"
)

// fakeReplicas is a Replicas the test drives.
type fakeReplicas struct {
	mu       sync.Mutex // protects following fields
	rank, n  int
	fenced   bool
	changedc chan struct{}
}

var _ Replicas = (*fakeReplicas)(nil)

func newFakeReplicas(rank, n int) *fakeReplicas {
	return &fakeReplicas{rank: rank, n: n, changedc: make(chan struct{})}
}

func (r *fakeReplicas) Members() (int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rank, r.n
}

func (r *fakeReplicas) Fenced() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fenced
}

func (r *fakeReplicas) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changedc
}

func (r *fakeReplicas) set(rank, n int, fenced bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rank, r.n, r.fenced = rank, n, fenced
	close(r.changedc)
	r.changedc = make(chan struct{})
}

// gatedStore holds every Put once gate is armed, until it is released or
// the call's ctx ends, like a store that cannot reach etcd.
type gatedStore struct {
	Store
	mu      sync.Mutex // protects following fields
	armed   bool
	entered chan struct{} // closed when a Put is held
	release chan struct{} // closed to let held Puts through
}

func (s *gatedStore) arm() (entered, release chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.armed = true
	s.entered, s.release = make(chan struct{}), make(chan struct{})
	return s.entered, s.release
}

func (s *gatedStore) Put(ctx context.Context, key string, value []byte, expect store.Expect, actor string) (int64, error) {
	s.mu.Lock()
	armed, entered, release := s.armed, s.entered, s.release
	s.armed = false
	s.mu.Unlock()
	if armed {
		close(entered)
		select {
		case <-release:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return s.Store.Put(ctx, key, value, expect, actor)
}

// A fenced replica's fleet pools hold no share: idle connections close at
// once, acquires fail fast with ErrFenced, the leased connection closes on
// release, nothing is dialed, and replica-scoped pools keep serving. The
// fence applies even while a write hangs on the store; un-fencing
// re-divides first.
func TestFleetPoolsFenced(t *testing.T) {
	st := &gatedStore{Store: newMemStore()}
	t.Cleanup(func() { _ = st.Store.(*memStore).Close() })
	reps := newFakeReplicas(0, 2)
	m, err := NewManager(ManagerConfig{Store: st, Logger: slog.New(slog.DiscardHandler), Replicas: reps})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	ctx, cancel := testContext(t)
	defer cancel()
	if err := m.Load(ctx); err != nil {
		t.Fatal(err)
	}
	addr := upstream(t)
	fleetCfg := withMax(cfgFor(addr), 4)
	fleetCfg.Limits.MinIdle = 2
	fleetCfg.Limits.Scope = ScopeFleet
	mustCreate(t, m, "fleet", fleetCfg)
	mustCreate(t, m, "per", withMax(cfgFor(addr), 2))
	fleet, _ := m.Pool("fleet")
	per, _ := m.Pool("per")
	waitPool(t, fleet, "share 2 of 4, one idle", func(s Stats) bool { return s.Max == 2 && s.Idle == 1 && !s.Fenced })

	leased, err := fleet.Acquire(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	waitPool(t, fleet, "min_idle refilled", func(s Stats) bool { return s.Idle == 1 && s.InUse == 1 })

	reps.set(0, 2, true)
	waitPool(t, fleet, "fenced: share 0, idle closed, lease kept", func(s Stats) bool {
		return s.Fenced && s.Max == 0 && s.Idle == 0 && s.Total == 1 && s.InUse == 1 && s.Dialing == 0
	})
	if fleet.Serving() {
		t.Error("a fenced pool reports Serving")
	}
	start := time.Now()
	_, err = fleet.Acquire(ctx, "t")
	var aerr *AcquireError
	if !errors.Is(err, ErrFenced) || !errors.As(err, &aerr) || aerr.Snapshot.Max != 0 {
		t.Fatalf("Acquire on a fenced pool = %v, want an AcquireError with ErrFenced and max 0", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("a fenced Acquire took %v: it must fail at once", d)
	}
	c, err := per.Acquire(ctx, "t")
	if err != nil {
		t.Fatalf("a replica-scoped pool refused while fenced: %v", err)
	}
	c.Release(true)
	if per.Fenced() || !per.Serving() {
		t.Error("the replica-scoped pool is fenced")
	}
	leased.Release(true)
	waitPool(t, fleet, "the leased connection closed on release", func(s Stats) bool { return s.Total == 0 })

	// A fleet pool created while fenced starts fenced: no prewarm dial.
	mustCreate(t, m, "late", fleetCfg)
	late, _ := m.Pool("late")
	if s := late.Stats(); !s.Fenced || s.Max != 0 || s.Dials != 0 {
		t.Errorf("pool created while fenced: %+v", s)
	}
	// Turning it replica-scoped lifts its fence.
	lateCfg := fleetCfg
	lateCfg.Limits.Scope = ScopeReplica
	if _, err := m.Update(ctx, "late", lateCfg, 0, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPool(t, late, "replica-scoped: whole limit", func(s Stats) bool { return !s.Fenced && s.Max == 4 && s.Idle == 2 })

	// Un-fenced alone in the fleet: the share is re-divided (4), then
	// the pool dials again.
	reps.set(0, 1, false)
	waitPool(t, fleet, "unfenced with the whole limit", func(s Stats) bool {
		return !s.Fenced && s.Max == 4 && s.Idle == 2
	})
	if _, err := fleet.Acquire(ctx, "t"); err != nil {
		t.Fatalf("Acquire after unfence: %v", err)
	}

	// A write hanging on the store (holding the write lock) does not
	// delay the fence.
	entered, release := st.arm()
	wdone := make(chan error, 1)
	go func() {
		_, err := m.Update(ctx, "per", withMax(cfgFor(addr), 3), 0, WriteOptions{})
		wdone <- err
	}()
	<-entered
	reps.set(0, 1, true)
	waitPool(t, fleet, "fenced while a write hangs", func(s Stats) bool { return s.Fenced && s.Idle == 0 })
	reps.set(0, 2, false) // un-fencing waits for the write: the share needs it
	close(release)
	if err := <-wdone; err != nil {
		t.Fatal(err)
	}
	waitPool(t, fleet, "unfenced after the write, share 2", func(s Stats) bool { return !s.Fenced && s.Max == 2 })
}
