package poolmgr

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/poolplane/poolplane/poolmgr/engine"
)

// WaitGeneration waits until the live pool holds no connection of a
// generation below gen, or ctx ends. It returns ErrPoolNotFound if the pool
// is not running, and otherwise what Pool.WaitGeneration returns.
func (m *Manager) WaitGeneration(ctx context.Context, id string, gen uint64) error {
	p, err := m.Pool(id)
	if err != nil {
		return err
	}
	return p.WaitGeneration(ctx, gen)
}

// WaitDrained waits until the live pool has no leased connection, or ctx
// ends. It returns ErrPoolNotFound if the pool is not running, and
// otherwise what Pool.WaitDrained returns.
func (m *Manager) WaitDrained(ctx context.Context, id string) error {
	p, err := m.Pool(id)
	if err != nil {
		return err
	}
	return p.WaitDrained(ctx)
}

// Pool returns the live pool with that id, for leasing and stats. It
// returns ErrPoolNotFound if no such pool runs, and ErrPoolClosed after
// Close. The pool may be deleted (and closed) at any time after.
func (m *Manager) Pool(id string) (*Pool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrPoolClosed
	}
	p, ok := m.pools[id]
	if !ok {
		return nil, fmt.Errorf("pool %s: %w", id, ErrPoolNotFound)
	}
	return p, nil
}

// Pools returns the IDs of the live pools, sorted.
func (m *Manager) Pools() []string {
	m.mu.Lock()
	ids := make([]string, 0, len(m.pools))
	for id := range m.pools {
		ids = append(ids, id)
	}
	m.mu.Unlock()
	slices.Sort(ids)
	return ids
}

// Leases lists the active leases of pool id, or of every pool if id is "",
// sorted by pool then lease start. It returns ErrPoolNotFound for an
// unknown id, ctx's error, and ErrPoolClosed after Close.
func (m *Manager) Leases(ctx context.Context, id string) ([]LeaseInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var pools []*Pool
	if id != "" {
		p, err := m.Pool(id)
		if err != nil {
			return nil, err
		}
		pools = []*Pool{p}
	} else {
		pools = m.livePools()
		if pools == nil && m.isClosed() {
			return nil, ErrPoolClosed
		}
	}
	var out []LeaseInfo
	for _, p := range pools {
		ls := p.Leases()
		slices.SortStableFunc(ls, func(a, b LeaseInfo) int { return a.Since.Compare(b.Since) })
		out = append(out, ls...)
	}
	return out, nil
}

// RevokeLease ends the lease with that ID, in whichever pool holds it, by
// closing its connection. It returns ErrLeaseNotFound if no pool has it,
// ctx's error, and ErrPoolClosed after Close.
func (m *Manager) RevokeLease(ctx context.Context, leaseID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if m.isClosed() {
		return ErrPoolClosed
	}
	for _, p := range m.livePools() {
		err := p.Revoke(leaseID)
		if !errors.Is(err, ErrLeaseNotFound) {
			return err
		}
	}
	return fmt.Errorf("lease %s: %w", leaseID, ErrLeaseNotFound)
}

func (m *Manager) lookup(id string) *Pool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pools[id]
}

// livePools returns the live pools and the retiring ones (which may still
// have leases), sorted by ID; nil after Close.
func (m *Manager) livePools() []*Pool {
	m.mu.Lock()
	ps := make([]*Pool, 0, len(m.pools)+len(m.retiring))
	for _, p := range m.pools {
		ps = append(ps, p)
	}
	for p := range m.retiring {
		ps = append(ps, p)
	}
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return nil
	}
	slices.SortFunc(ps, func(a, b *Pool) int { return cmp.Compare(a.Name(), b.Name()) })
	return ps
}

// startPool starts a live pool for rec, in rec's state, and registers it,
// replacing (and closing) any pool of that id. The caller holds wsem.
func (m *Manager) startPool(id string, rec record) error {
	cfg := m.liveConfig(id, rec.Config)
	m.mu.Lock()
	fenced, seq := m.fenceDecisionLocked(id) // a fenced pool starts without prewarming
	m.mu.Unlock()
	p, err := engine.NewFencedPool(id, cfg, m.env, engine.Fence{Fenced: fenced, Seq: seq})
	if err != nil {
		return err
	}
	applyState(p, rec.State)
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		_ = p.Close() // never served; ErrPoolClosed is the error to report
		return ErrPoolClosed
	}
	old := m.pools[id]
	m.pools[id] = p
	m.mu.Unlock()
	// Decide again now that p is registered: a fence applied meanwhile
	// by the membership loop did not see p.
	m.syncFence(id, p)
	if old != nil {
		m.retire(old)
	}
	m.syncListeners(id, &rec.Config)
	return nil
}

// applyLive brings the live pool of id to rec: its config if cfgChanged,
// its state if stateChanged. A pool not running (its start failed before)
// is started. The caller holds wsem.
func (m *Manager) applyLive(id string, rec record, cfgChanged, stateChanged bool) error {
	p := m.lookup(id)
	if p == nil {
		if m.isClosed() {
			return ErrPoolClosed
		}
		return m.startPool(id, rec)
	}
	if cfgChanged {
		if _, err := p.Reconfigure(m.liveConfig(id, rec.Config)); err != nil {
			return err
		}
		m.syncFence(id, p) // the scope may have changed
	}
	if stateChanged {
		applyState(p, rec.State)
	}
	if cfgChanged {
		m.syncListeners(id, &rec.Config)
	}
	return nil
}

// stopPool unregisters the live pool of id and retires it. The caller
// holds wsem.
func (m *Manager) stopPool(id string) {
	m.mu.Lock()
	p := m.pools[id]
	delete(m.fleet, id)
	delete(m.pools, id)
	m.mu.Unlock()
	m.syncListeners(id, nil)
	if p != nil {
		m.retire(p)
	}
}

// retire drains p (no new leases, idle connections closed) and closes it
// once its last lease is released, so no lease is cut; Close closes it
// sooner.
func (m *Manager) retire(p *Pool) {
	p.Drain()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		_ = p.Close() // Pool.Close always returns nil
		return
	}
	donec := make(chan struct{})
	m.retiring[p] = donec
	m.wg.Add(1) // under mu, so Close cannot be waiting already
	m.mu.Unlock()
	go func() {
		defer m.wg.Done()
		defer close(donec)
		// An error means Close was called: close now all the same.
		_ = p.WaitDrained(m.stopCtx)
		_ = p.Close() // Pool.Close always returns nil
		m.mu.Lock()
		delete(m.retiring, p)
		m.mu.Unlock()
	}()
}

// applyState moves a live pool to s.
func applyState(p *Pool, s State) {
	switch s {
	case StateActive:
		if p.State() != StateActive {
			p.Resume()
		}
	case StatePaused:
		if p.State() == StateDraining {
			p.Resume() // Pool.Pause does nothing while draining
		}
		p.Pause()
	case StateDraining:
		p.Drain()
	default:
		panic(fmt.Sprintf("poolmgr: internal error: unknown state %d", s))
	}
}
