package engine

import (
	"context"
	"crypto/tls"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Changed returns a channel closed at the next change of the pool's state,
// configuration or counts (a lease, a release, a dial, a close...). Callers
// re-read what they need (Stats, Leases) and call Changed again; polling
// Stats on a ticker is the simpler alternative.
func (p *Pool) Changed() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.changec == nil {
		p.changec = make(chan struct{})
	}
	return p.changec
}

// waitFor waits until cond, evaluated under the lock, holds.
func (p *Pool) waitFor(ctx context.Context, cond func() bool) error {
	for {
		p.mu.Lock()
		if cond() {
			p.mu.Unlock()
			return nil
		}
		if p.changec == nil {
			p.changec = make(chan struct{})
		}
		ch := p.changec
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Retired counts connections a change retires.
type Retired struct{ Idle, Leased int }

// Plan reports what Reconfigure(cfg) would retire, without changing anything:
// every connection when the endpoints or TLS change, else the idle ones
// closed to fit a smaller max_connections or max_idle and the leased ones
// that will close on release.
func (p *Pool) Plan(cfg Config) Retired {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.planLocked(cfg)
}

func (p *Pool) planLocked(cfg Config) Retired {
	idle := p.idle.Len()
	if !p.cfg.sameUpstream(cfg) {
		return Retired{Idle: idle, Leased: p.total - idle}
	}
	var r Retired
	if excess := p.total - cfg.Limits.MaxConnections; excess > 0 {
		r.Idle = min(excess, idle)
		r.Leased = excess - r.Idle
	}
	if rest := idle - r.Idle; rest > cfg.Limits.MaxIdle {
		r.Idle += rest - cfg.Limits.MaxIdle
	}
	return r
}

// Reconfigure applies cfg live and returns what it retired (see Plan).
// Limits and timeouts apply at once: a smaller max closes idle connections
// first and leased ones on release, never cutting a lease; queued acquires
// are re-evaluated (a larger max lets them dial). An endpoint or TLS change
// bumps the generation: idle connections close now, leased ones on release.
// cfg must have passed WithDefaults and Validate. It returns ErrPoolClosed
// after Close, or an error for unusable TLS material.
func (p *Pool) Reconfigure(cfg Config) (Retired, error) {
	var tlsBase *tls.Config
	if cfg.TLS.Enabled {
		var err error
		if tlsBase, err = newTLSBase(cfg.TLS); err != nil {
			return Retired{}, fmt.Errorf("pool %s: tls: %w", p.name, err)
		}
	}
	cfg = cloneConfig(cfg)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return Retired{}, ErrPoolClosed
	}
	p.cfgVer++
	p.resetTimeout.Store(int64(cfg.ResetTimeout))
	r := p.planLocked(cfg)
	var toClose []*Conn
	if !p.cfg.sameUpstream(cfg) {
		p.cfg = cfg
		p.tlsBase = tlsBase
		p.handler = newHandler(cfg)
		p.bumpGenerationLocked()
		toClose = p.discardIdleLocked(toClose, func(*Conn) (CloseReason, bool) { return CloseGeneration, true })
	} else {
		p.cfg = cfg
		// The idle connections to close are the ones idle the longest: at the front.
		for range r.Idle {
			c, _ := p.idle.PopFront()
			p.discardLocked(c, CloseShrink)
			toClose = append(toClose, c)
		}
	}
	p.maybeDialLocked(context.Background())
	p.kickLocked()
	p.notifyLocked()
	p.mu.Unlock()
	p.closeAll(toClose)
	return r, nil
}

// bumpGenerationLocked starts a new generation: connections of older ones
// retire, and endpoints are resolved afresh.
func (p *Pool) bumpGenerationLocked() {
	p.gen++
	p.setEndpointsLocked()
	p.consecFails, p.circuitOpen, p.nextDialAt, p.lastDialErr = 0, false, time.Time{}, nil
}

// Drain stops new leases (acquires fail with ErrDraining, queued ones too)
// and closes idle connections; leases finish normally and their connections
// close on release. Resume ends it.
func (p *Pool) Drain() {
	p.mu.Lock()
	if p.closed || p.state == StateDraining {
		p.mu.Unlock()
		return
	}
	p.state = StateDraining
	toClose := p.discardIdleLocked(nil, func(*Conn) (CloseReason, bool) { return CloseDrain, true })
	p.failWaitersLocked(p.acquireErrorLocked(ErrDraining, time.Time{}))
	p.notifyLocked()
	p.mu.Unlock()
	p.closeAll(toClose)
}

// Pause makes new acquires wait until Resume (their acquire_timeout keeps
// running). Leases in progress are unaffected. It does nothing while
// draining.
func (p *Pool) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed && p.state == StateActive {
		p.state = StatePaused
		p.notifyLocked()
	}
}

// Resume ends Pause or Drain: queued acquires take idle connections or get
// new ones dialed, and min_idle is refilled.
func (p *Pool) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.state == StateActive {
		return
	}
	p.state = StateActive
	// Idle connections were kept while paused; waiters go back and take
	// them through the usual checkout checks.
	for range p.idle.Len() {
		e := p.waiters.PopFront()
		if e == nil {
			break
		}
		e.Value.ch <- waitResult{retry: true}
	}
	p.maybeDialLocked(context.Background())
	p.notifyLocked()
}

// Reconnect bumps the generation and returns the new one: idle connections
// close now, leased ones on release, and min_idle is refilled with new ones.
// Use WaitGeneration to wait for the old connections to be gone.
func (p *Pool) Reconnect() uint64 {
	p.mu.Lock()
	p.bumpGenerationLocked()
	gen := p.gen
	toClose := p.discardIdleLocked(nil, func(*Conn) (CloseReason, bool) { return CloseGeneration, true })
	p.maybeDialLocked(context.Background())
	p.kickLocked()
	p.notifyLocked()
	p.mu.Unlock()
	p.closeAll(toClose)
	return gen
}

// WaitGeneration waits until no open connection of a generation below gen
// remains, or ctx ends (returning ctx.Err()).
func (p *Pool) WaitGeneration(ctx context.Context, gen uint64) error {
	return p.waitFor(ctx, func() bool {
		for g := range p.genCount {
			if g < gen {
				return false
			}
		}
		return true
	})
}

// WaitDrained waits until no connection is leased, or ctx ends (returning
// ctx.Err()).
func (p *Pool) WaitDrained(ctx context.Context) error {
	return p.waitFor(ctx, func() bool { return len(p.leased) == 0 })
}

// Close closes the pool: queued acquires fail with ErrPoolClosed, idle
// connections close, leased ones are closed too (their Done channels close
// and a later Release does nothing), dials in flight are cancelled and their
// results closed. It waits for the pool's goroutines. Idempotent; it always
// returns nil.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.donec
		p.dialWG.Wait()
		return nil
	}
	p.closed = true
	toClose := p.discardIdleLocked(nil, func(*Conn) (CloseReason, bool) { return CloseClosed, true })
	for len(p.leased) > 0 {
		c := p.leased[len(p.leased)-1]
		p.discardLocked(c, CloseClosed)
		toClose = append(toClose, c)
	}
	p.failWaitersLocked(ErrPoolClosed)
	p.notifyLocked()
	p.cancel()
	close(p.stopc)
	p.mu.Unlock()
	p.closeAll(toClose)
	<-p.donec
	p.dialWG.Wait()
	return nil
}

// Leases lists the active leases, in no particular order.
func (p *Pool) Leases() []LeaseInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]LeaseInfo, 0, len(p.leased))
	for _, c := range p.leased {
		out = append(out, LeaseInfo{
			ID:           p.leaseID(c.leaseSeq),
			Pool:         p.name,
			Holder:       c.holder,
			Since:        c.since,
			UpstreamAddr: c.addr,
			Generation:   c.gen,
		})
	}
	return out
}

func (p *Pool) leaseID(seq uint64) string {
	return p.leasePrefix + strconv.FormatUint(seq, 10)
}

// Revoke ends a lease by closing its connection: the holder's I/O fails and
// Conn.Done is closed; its later Release does nothing. It returns
// ErrLeaseNotFound when no active lease of this pool has that ID.
func (p *Pool) Revoke(leaseID string) error {
	rest, ok := strings.CutPrefix(leaseID, p.leasePrefix)
	if !ok {
		return fmt.Errorf("pool %s: lease %q: %w", p.name, leaseID, ErrLeaseNotFound)
	}
	seq, err := strconv.ParseUint(rest, 10, 64)
	if err != nil {
		return fmt.Errorf("pool %s: lease %q: %w", p.name, leaseID, ErrLeaseNotFound)
	}
	p.mu.Lock()
	for _, c := range p.leased {
		if c.leaseSeq == seq {
			p.discardLocked(c, CloseRevoked)
			p.mu.Unlock()
			p.closeConn(c)
			return nil
		}
	}
	p.mu.Unlock()
	return fmt.Errorf("pool %s: lease %q: %w", p.name, leaseID, ErrLeaseNotFound)
}

// Serving reports whether the pool can hand out connections now: open,
// active (not paused or draining), not fenced and with its dial circuit
// closed.
func (p *Pool) Serving() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.closed && p.state == StateActive && !p.fenced && !p.circuitOpen
}

// Fenced reports whether the pool is fenced (see SetFence): it holds no
// share of its limit. Its Stats show Max 0 and Fenced meanwhile.
func (p *Pool) Fenced() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fenced
}

// SetFence fences the pool (share 0) or un-fences it, following the owner's
// decision f; a decision older than the last one applied is ignored, so
// concurrent decisions end in the latest. Fencing fails
// queued acquires with ErrFenced, closes idle connections at once, cancels
// dials in flight and starts none; leased connections close on release.
// Un-fencing lets the pool dial again up to its configured limits.
func (p *Pool) SetFence(f Fence) {
	fenced, seq := f.Fenced, f.Seq
	p.mu.Lock()
	if p.closed || seq < p.fenceSeq {
		p.mu.Unlock()
		return
	}
	p.fenceSeq = seq
	if p.fenced == fenced {
		p.mu.Unlock()
		return
	}
	p.fenced = fenced
	var toClose []*Conn
	if fenced {
		p.dialCancel()
		toClose = p.discardIdleLocked(nil, func(*Conn) (CloseReason, bool) { return CloseShrink, true })
		p.failWaitersLocked(p.acquireErrorLocked(ErrFenced, time.Time{}))
	} else {
		p.dialCtx, p.dialCancel = context.WithCancel(p.ctx)
		p.maybeDialLocked(context.Background())
	}
	p.kickLocked()
	p.notifyLocked()
	p.mu.Unlock()
	p.closeAll(toClose)
}
