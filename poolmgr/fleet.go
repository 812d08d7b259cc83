package poolmgr

import (
	"context"
	"errors"
	"log/slog"

	"github.com/poolplane/poolplane/poolmgr/engine"
)

// Replicas reports the live poold replicas that share this Manager's store,
// for pools whose limits are fleet-scoped (Limits.Scope == ScopeFleet).
// Declared here, where it is used; package etcdstore implements it with
// replicas registered under an etcd lease. Implementations must be safe
// for concurrent use.
type Replicas interface {
	// Members returns this replica's rank among the n live replicas
	// (0 <= rank < n, n >= 1), ranks ordered the same way on every
	// replica.
	Members() (rank, n int)
	// Fenced reports that this replica may no longer be registered (it
	// could not confirm its registration in time, or has not registered
	// yet), so the others may have taken its share: while it is true,
	// every fleet-scoped pool holds no share (Pool.Fenced): acquires fail
	// at once with ErrFenced, idle connections close, leased ones close
	// on release, and nothing is dialed. Replica-scoped pools are not
	// affected. When it turns false the shares are re-divided from
	// Members before the pools serve again.
	Fenced() bool
	// Changed returns a channel that is closed at the next change of
	// Members or Fenced.
	Changed() <-chan struct{}
}

// ReplicaLister is implemented by Replicas that can name the replicas;
// ReplicaSet uses it.
type ReplicaLister interface {
	// ID returns this replica's id.
	ID() string
	// List returns the ids of the live replicas, this one included, in
	// rank order.
	List() []string
}

// ReplicaSet is the set of replicas sharing a Manager's store, as this
// replica sees it.
type ReplicaSet struct {
	// Self is this replica's id; "" when the Manager has no Replicas (one
	// poold on its own store).
	Self string
	// Members are the live replicas' ids in rank order, Self included; nil
	// when the Manager has no Replicas or they cannot be listed.
	Members []string
	// Fenced reports that this replica holds no share of fleet limits
	// (Replicas.Fenced).
	Fenced bool
}

// ReplicaSet returns the replicas sharing the store as this replica sees
// them. It is safe for concurrent use.
func (m *Manager) ReplicaSet() ReplicaSet {
	if m.replicas == nil {
		return ReplicaSet{}
	}
	rs := ReplicaSet{Fenced: m.replicas.Fenced()}
	if l, ok := m.replicas.(ReplicaLister); ok {
		rs.Self, rs.Members = l.ID(), l.List()
	}
	return rs
}

// FleetShare returns the part of a fleet-wide limit that the replica of
// rank takes among n: limit/n, plus one for the first limit%n ranks, so
// the shares of n replicas that agree on n add up to exactly limit. A
// share is at least minShare (the engine's lower bound, 1 for
// max_connections), so when limit < n the fleet may hold up to n.
func FleetShare(limit, rank, n, minShare int) int {
	if n <= 1 {
		return max(limit, minShare)
	}
	s := limit / n
	if rank < limit%n {
		s++
	}
	return max(s, minShare)
}

// liveConfig returns the config a live pool of id runs with: the stored
// config with its defaults, and for fleet-scoped limits this replica's
// share of them. It records fleet-scoped configs for re-division. The
// caller holds wsem.
func (m *Manager) liveConfig(id string, stored Config) Config {
	cfg := stored.WithDefaults()
	m.mu.Lock()
	if cfg.Limits.Scope == ScopeFleet {
		m.fleet[id] = cfg
	} else {
		delete(m.fleet, id)
	}
	m.mu.Unlock()
	if cfg.Limits.Scope != ScopeFleet || m.replicas == nil {
		return cfg
	}
	rank, n := m.replicas.Members()
	return shareConfig(cfg, rank, n)
}

// shareConfig scales a fleet config's limits to one replica's share.
func shareConfig(cfg Config, rank, n int) Config {
	l := &cfg.Limits
	l.MaxConnections = FleetShare(l.MaxConnections, rank, n, 1)
	l.MaxIdle = min(FleetShare(l.MaxIdle, rank, n, 1), l.MaxConnections)
	l.MinIdle = min(FleetShare(l.MinIdle, rank, n, 0), l.MaxIdle)
	return cfg
}

// startMembership starts the loop that re-divides fleet limits when the
// replicas change. Its owner is the Manager: Close cancels stopCtx and
// waits for membersDonec.
func (m *Manager) startMembership() {
	donec := make(chan struct{})
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.membersDonec = donec
	m.mu.Unlock()
	go m.runMembership(donec)
}

// runMembership fences fleet pools at once when the replicas report
// Fenced, without waiting for writes in progress (a write can hang on an
// unreachable store until its deadline); otherwise it re-divides the
// shares, then un-fences.
func (m *Manager) runMembership(donec chan struct{}) {
	defer close(donec)
	ctx := m.stopCtx
	for {
		changed := m.replicas.Changed() // before reading, so no change is missed
		if m.replicas.Fenced() {
			m.applyFence()
		} else {
			switch err := m.redivide(ctx, changed); {
			case errors.Is(err, errReplicasChanged):
				continue
			case err != nil:
				return // closed
			}
			m.applyFence() // un-fences, now that the shares are current
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

// errReplicasChanged: redivide gave up waiting for the write lock because
// the replicas changed meanwhile (maybe fenced).
var errReplicasChanged = errors.New("replicas changed")

// fenceDecisionLocked decides whether the live pool of id must be fenced
// now: it is fleet-scoped and the replicas are fenced. Each decision takes
// the next sequence number, and a pool applies only decisions newer than
// the last it applied (Pool.SetFence), so decisions racing to one pool
// end in the latest. The caller holds mu.
func (m *Manager) fenceDecisionLocked(id string) (fenced bool, seq uint64) {
	m.fenceSeq++
	_, fleet := m.fleet[id]
	return fleet && m.replicas != nil && m.replicas.Fenced(), m.fenceSeq
}

// syncFence applies the current fence decision to the live pool p of id,
// after its config (and so its scope and share) was computed.
func (m *Manager) syncFence(id string, p *Pool) {
	if m.replicas == nil {
		return
	}
	m.mu.Lock()
	fenced, seq := m.fenceDecisionLocked(id)
	m.mu.Unlock()
	p.SetFence(engine.Fence{Fenced: fenced, Seq: seq})
}

// applyFence applies the current fence decision to every live
// fleet-scoped pool, and logs when it changes.
func (m *Manager) applyFence() {
	type item struct {
		p      *Pool
		fenced bool
		seq    uint64
	}
	m.mu.Lock()
	var items []item
	for id := range m.fleet {
		if p := m.pools[id]; p != nil {
			f, seq := m.fenceDecisionLocked(id)
			items = append(items, item{p, f, seq})
		}
	}
	fenced := m.replicas.Fenced()
	logIt := fenced != m.fenced
	m.fenced = fenced
	m.mu.Unlock()
	for _, it := range items {
		it.p.SetFence(engine.Fence{Fenced: it.fenced, Seq: it.seq})
	}
	if !logIt {
		return
	}
	if fenced {
		m.logger.LogAttrs(m.stopCtx, slog.LevelWarn, "fleet limits: replica fenced, fleet pools hold no share",
			slog.Int("pools", len(items)))
	} else {
		m.logger.LogAttrs(m.stopCtx, slog.LevelInfo, "fleet limits: replica unfenced, shares restored",
			slog.Int("pools", len(items)))
	}
}

// redivide reconfigures every live fleet-scoped pool to this replica's
// current share. It returns errReplicasChanged if changed is closed before
// it gets the write lock, and otherwise an error only when the Manager
// closes.
func (m *Manager) redivide(ctx context.Context, changed <-chan struct{}) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case m.wsem <- struct{}{}:
	case <-changed:
		return errReplicasChanged
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-m.wsem }()
	if m.isClosed() {
		return ErrPoolClosed
	}
	rank, n := m.replicas.Members()
	m.mu.Lock()
	type item struct {
		p   *Pool
		cfg Config
	}
	var items []item
	for id, cfg := range m.fleet {
		if p := m.pools[id]; p != nil {
			items = append(items, item{p, shareConfig(cfg, rank, n)})
		}
	}
	m.mu.Unlock()
	for _, it := range items {
		if it.p.Config().Limits.MaxConnections == it.cfg.Limits.MaxConnections &&
			it.p.Config().Limits.MinIdle == it.cfg.Limits.MinIdle && it.p.Config().Limits.MaxIdle == it.cfg.Limits.MaxIdle {
			continue
		}
		if _, err := it.p.Reconfigure(it.cfg); err != nil {
			m.logger.LogAttrs(ctx, slog.LevelError, "fleet limits: reconfigure failed", slog.String("pool", it.p.Name()), slog.Any("error", err))
			continue
		}
		m.logger.LogAttrs(ctx, slog.LevelInfo, "fleet limits: share changed", slog.String("pool", it.p.Name()),
			slog.Int("replicas", n), slog.Int("rank", rank), slog.Int("max_connections", it.cfg.Limits.MaxConnections))
	}
	return nil
}
