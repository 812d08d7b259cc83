package poolmgr

import (
	"context"
	"log/slog"
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
	// Changed returns a channel that is closed at the next change of
	// Members.
	Changed() <-chan struct{}
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

func (m *Manager) runMembership(donec chan struct{}) {
	defer close(donec)
	ctx := m.stopCtx
	for {
		changed := m.replicas.Changed() // before reading, so no change is missed
		if err := m.redivide(ctx); err != nil {
			return // closed
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

// redivide reconfigures every live fleet-scoped pool to this replica's
// current share. It returns an error only when the Manager closes.
func (m *Manager) redivide(ctx context.Context) error {
	unlock, err := m.lockWrites(ctx)
	if err != nil {
		return err
	}
	defer unlock()
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
