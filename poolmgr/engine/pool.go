package engine

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/poolplane/poolplane/poolmgr/engine/internal/deque"
	"github.com/poolplane/poolplane/poolmgr/engine/internal/waitq"

	"github.com/poolplane/poolplane/protocol"
)

// State is a pool's lifecycle state.
type State int

const (
	// StateActive means the pool grants leases.
	StateActive State = iota
	// StatePaused means new acquires wait (counting against acquire_timeout)
	// until Resume; leases in progress are unaffected.
	StatePaused
	// StateDraining means new acquires fail with ErrDraining, idle connections are
	// closed and leased ones close when released.
	StateDraining
)

// String returns the API name of the state.
func (s State) String() string {
	switch s {
	case StateActive:
		return "ACTIVE"
	case StatePaused:
		return "PAUSED"
	case StateDraining:
		return "DRAINING"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// DialFunc dials one resolved address ("ip:port"). It is the process boundary
// tests fake.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Resolver resolves endpoint host names; *net.Resolver satisfies it.
type Resolver interface {
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// Env is what a pool takes from its owner besides its Config.
type Env struct {
	Now      func() time.Time // default: time.Now read through the monotonic clock (see NewPool)
	Dial     DialFunc         // default net.Dialer with the pool's keepalive
	Resolver Resolver         // default net.DefaultResolver
	Logger   *slog.Logger     // default slog.Default()
	// Upstreams is checked before every dial, on the resolved address, and
	// by the Manager on every endpoint written. Default: an empty
	// Allowlist (every upstream but link-local, metadata and unspecified
	// addresses).
	Upstreams UpstreamPolicy
}

// Tuning constants of the dial circuit.
const (
	dialBackoffBase  = 50 * time.Millisecond
	dialBackoffMax   = 5 * time.Second
	circuitThreshold = 5 // consecutive dial failures that open the circuit
	maxFreeWaiters   = 1024
)

// Pool is one named pool of upstream connections. All methods are safe for
// concurrent use.
//
// A Pool runs one maintenance goroutine (expiry, health checks, min_idle
// refill, DNS re-resolution, lease revocation) and one goroutine per dial in
// flight; Close stops and waits for all of them. Callers never dial on their
// own goroutine: a dial belongs to the pool, and a caller that gives up does
// not cancel it.
//
// Callers that want to follow a pool's state either poll Stats (the server's
// WatchPoolStats does so on a ticker) or wait on Changed.
type Pool struct {
	name        string
	env         Env
	leasePrefix string // name + "-" + random instance tag + "-"

	ctx    context.Context    // cancelled by Close; bounds every dial
	cancel context.CancelFunc // cancels ctx
	stopc  chan struct{}      // closed by Close: stops the maintenance loop
	donec  chan struct{}      // closed when the maintenance loop has returned
	kickc  chan struct{}      // size 1: wakes the maintenance loop early
	dialWG sync.WaitGroup     // dial goroutines in flight

	bytesIn, bytesOut atomic.Uint64 // bumped outside the lock by Conn.AddBytes

	mu sync.Mutex // protects every field below, and the Locked fields of each Conn
	// cfg is the live configuration; tlsBase is built from cfg.TLS (nil
	// without TLS) and keeps the TLS session cache across dials.
	cfg     Config
	cfgVer  uint64 // bumped by every Reconfigure
	tlsBase *tls.Config
	// handler is cfg.Protocol's, with cfg's setup (nil for RAW).
	handler protocol.Handler
	// resetTimeout is cfg.ResetTimeout, read without the lock.
	resetTimeout atomic.Int64
	state        State
	closed       bool
	// fenced withdraws the pool's whole share of its limit (see
	// SetFence); fenceSeq orders the owner's fence decisions.
	fenced   bool
	fenceSeq uint64
	// dialCtx bounds every dial: a child of ctx, cancelled when the pool
	// is fenced (and replaced when it is un-fenced).
	dialCtx    context.Context
	dialCancel context.CancelFunc
	gen        uint64
	// genCount counts open connections by generation (for WaitGeneration).
	genCount map[uint64]int
	// idle holds idle connections, most recently released at the back.
	idle deque.Deque[*Conn]
	// probing counts idle connections taken out of idle for a health
	// check: they still count as idle (see idleLocked).
	probing int
	// leased holds the connections under lease; Conn.leaseIdx indexes it.
	leased []*Conn
	// waiters queue FIFO for a connection; freeWaiters recycles them.
	waiters     waitq.Queue[*waiter]
	freeWaiters []*waiter
	total       int // open connections: idle + leased + being checked
	closing     int // discarded connections not closed yet; they hold their slot
	dialing     int // dials in flight
	leaseSeq    uint64
	// addrs are the resolved upstream addresses, dialed round-robin (rr).
	addrs       []upstreamAddr
	rr          int
	hasNames    bool      // some endpoint is a name to resolve
	lastResolve time.Time // when addrs were last resolved
	resolving   bool
	// Dial circuit: consecutive failures back off until nextDialAt; at
	// circuitThreshold the circuit opens and one probe dial at a time runs.
	// Failures count by round: failRound grows with each counted failure,
	// and a dial started before it (in the same round) adds nothing.
	consecFails int
	failRound   uint64
	nextDialAt  time.Time
	circuitOpen bool
	lastDialErr error
	// wakeAt is when the maintenance loop will next wake by itself.
	wakeAt time.Time
	// changec is closed at the next change and reset to nil; nil when no one
	// waits, so changes cost nothing then.
	changec chan struct{}
	st      counters
}

// Fence is the owner's decision to withdraw a pool's whole share of its
// limit (Fenced) or to give it back. Seq orders decisions: a pool applies
// only a decision at least as new as the last it applied, so decisions
// racing to one pool end in the latest. The engine knows nothing of why an
// owner fences (a replica set, a lost registration): it only obeys.
type Fence struct {
	Fenced bool
	Seq    uint64
}

// NewPool starts a pool (its maintenance loop and min_idle prewarm). cfg must
// have passed WithDefaults and Validate; NewPool returns a *ValidationError
// otherwise.
func NewPool(name string, cfg Config, env Env) (*Pool, error) {
	return NewFencedPool(name, cfg, env, Fence{})
}

// NewFencedPool is NewPool under the fence decision f: a fenced pool starts
// without prewarming and serves nothing until SetFence lifts the fence.
func NewFencedPool(name string, cfg Config, env Env, f Fence) (*Pool, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var tlsBase *tls.Config
	if cfg.TLS.Enabled {
		var err error
		if tlsBase, err = newTLSBase(cfg.TLS); err != nil {
			return nil, fmt.Errorf("pool %s: tls: %w", name, err)
		}
	}
	if env.Now == nil {
		// The default clock reads only the monotonic clock (time.Since),
		// half the cost of time.Now on the acquire path; wall times are
		// derived from the pool's creation.
		epoch := time.Now()
		env.Now = func() time.Time { return epoch.Add(time.Since(epoch)) }
	}
	if env.Resolver == nil {
		env.Resolver = net.DefaultResolver
	}
	if env.Upstreams == nil {
		env.Upstreams = defaultUpstreams
	}
	if env.Logger == nil {
		env.Logger = slog.Default()
	}
	var inst [4]byte
	_, _ = rand.Read(inst[:]) // crypto/rand.Read never fails
	p := &Pool{
		name:        name,
		env:         env,
		leasePrefix: name + "-" + hex.EncodeToString(inst[:]) + "-",
		stopc:       make(chan struct{}),
		donec:       make(chan struct{}),
		kickc:       make(chan struct{}, 1),
		cfg:         cloneConfig(cfg),
		tlsBase:     tlsBase,
		handler:     newHandler(cfg),
		gen:         1,
		genCount:    make(map[uint64]int),
		fenced:      f.Fenced,
		fenceSeq:    f.Seq,
	}
	p.resetTimeout.Store(int64(cfg.ResetTimeout))
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.dialCtx, p.dialCancel = context.WithCancel(p.ctx)
	p.setEndpointsLocked()
	p.mu.Lock()
	p.maybeDialLocked(context.Background()) // prewarm min_idle
	p.mu.Unlock()
	go p.loop()
	return p, nil
}

func cloneConfig(c Config) Config {
	c.Endpoints = slices.Clone(c.Endpoints)
	c.Labels = maps.Clone(c.Labels)
	c.Listeners = slices.Clone(c.Listeners)
	c.Postgres.Params = maps.Clone(c.Postgres.Params)
	return c
}

// Name returns the pool's ID.
func (p *Pool) Name() string { return p.name }

// Acquire leases a connection. holder names the caller (for Leases).
//
// It takes an idle connection that passes the checkout checks (lifetime; a
// non-blocking peek when idle longer than validate_after_idle), or waits in
// FIFO order for a released connection or one the pool dials. It returns:
//   - ErrPoolClosed after Close; *AcquireError with ErrDraining while
//     draining;
//   - *AcquireError with ErrFenced at once while the pool is fenced (its
//     owner withdrew its share, see SetFence: retry elsewhere); queued
//     acquires fail so too when the pool is fenced;
//   - *AcquireError with ErrExhausted at once when max_waiters callers are
//     already queued beyond the dials in flight;
//   - *AcquireError with ErrUnavailable at once when a dial is needed but
//     the dial circuit is open (RetryAfter says when it probes next);
//   - *AcquireError with ErrUpstreamNotAllowed when the upstream policy
//     refused the dials that were to serve it (at once when nothing else
//     can), or in place of ErrUnavailable while the last dial was refused;
//   - *AcquireError with ErrAcquireTimeout after acquire_timeout (time
//     spent paused counts);
//   - ctx.Err() when ctx ends first.
//
// An acquire served from the idle set allocates nothing.
func (p *Pool) Acquire(ctx context.Context, holder string) (*Conn, error) {
	return p.AcquireWithin(ctx, holder, 0)
}

// AcquireWithin is Acquire with the caller's own acquire timeout, for a
// caller that asks for less than the pool's: an acquire that has to wait
// fails with ErrAcquireTimeout after timeout, or after acquire_timeout when
// that is shorter or timeout is not positive. Like the pool's, it costs no
// timer or context: the maintenance loop expires queued acquires.
func (p *Pool) AcquireWithin(ctx context.Context, holder string, timeout time.Duration) (*Conn, error) {
	var (
		c *Conn   // the connection leased to the caller
		w *waiter // the caller's place in the queue, once it waited
		// err is why the acquire failed. ctx is checked once, here: a turn
		// after a retry wake-up must look at the idle set, not drop it.
		err = ctx.Err()
	)
	start := p.env.Now()
	p.mu.Lock()
	for now := start; err == nil; now = p.env.Now() {
		var (
			drop   *Conn // a connection to close before going on
			reason CloseReason
		)
		if err = p.acquirableLocked(); err != nil {
			break
		}
		if idle, ok := p.popIdleActiveLocked(); ok {
			var leased, bad bool
			if leased, reason, bad = p.checkoutLocked(ctx, idle, holder, start, now); leased {
				c = idle
			} else if bad {
				drop = idle
			}
		} else if err = p.refuseWaitLocked(now); err == nil {
			w = p.enqueueLocked(ctx, w, holder, start, timeout)
			p.mu.Unlock()
			var r waitResult
			select {
			case r = <-w.ch:
				p.mu.Lock()
				c, err = r.c, r.err // neither: retry, look at the idle set again
			case <-ctx.Done():
				p.mu.Lock()
				err = ctx.Err()
				drop, reason = p.leaveQueueLocked(w)
			}
		}
		if drop != nil {
			// The one discard path: the slot is freed once the socket is
			// closed, and may serve a waiter.
			p.discardLocked(drop, reason)
			p.mu.Unlock()
			drop.closeNet()
			p.mu.Lock()
			p.closing--
			p.maybeDialLocked(ctx)
		}
		if c != nil {
			break
		}
	}
	if w != nil {
		p.putWaiterLocked(w)
	}
	p.mu.Unlock()
	return c, err
}

// popIdleActiveLocked takes the next idle connection in the pool's idle
// order, if the pool is active and has one.
func (p *Pool) popIdleActiveLocked() (*Conn, bool) {
	if p.state != StateActive {
		return nil, false
	}
	if p.cfg.IdleOrder == FIFO {
		return p.idle.PopFront()
	}
	return p.idle.PopBack()
}

// checkoutLocked runs the checkout checks on c, just taken from the idle
// set, and leases it to holder when they pass (leased). Otherwise it
// reports the reason to discard c (bad), or neither when c went back to
// the pool because the pool closed or began to drain during the check.
// A peek at c (idle longer than validate_after_idle) runs outside the
// lock: checkoutLocked releases mu and takes it again, while c is ours.
func (p *Pool) checkoutLocked(ctx context.Context, c *Conn, holder string, start, now time.Time) (leased bool, reason CloseReason, bad bool) {
	if p.expiredLocked(c, now) {
		return false, CloseMaxLifetime, true
	}
	if p.idleLocked() < p.cfg.Limits.MinIdle {
		p.maybeDialLocked(ctx) // refill min_idle
	}
	if c.raw != nil && now.Sub(c.idleSince) >= p.cfg.Lifecycle.ValidateAfterIdle {
		c.state = connChecking
		// A protocol pool that asked for validation after an idle spell
		// also gets the protocol's own probe (a Redis PING): a round trip,
		// so not on every checkout.
		probe := c.handler != nil && p.cfg.Lifecycle.ValidateAfterIdle > 0
		timeout := p.cfg.Limits.DialTimeout
		p.mu.Unlock()
		ok := c.alive()
		if ok && probe {
			ok = c.probeProtocol(timeout)
		}
		p.mu.Lock()
		if !ok {
			return false, CloseUnhealthy, true
		}
		if p.acquirableLocked() != nil {
			// Closed or draining meanwhile: put it back through the
			// usual checks, which close it; the acquire then fails.
			reason, bad = p.putLocked(c, now)
			return false, reason, bad
		}
		now = p.env.Now()
	}
	p.leaseLocked(c, holder, start, now)
	return true, 0, false
}

// acquirableLocked returns the error an acquire fails with now, if any.
func (p *Pool) acquirableLocked() error {
	if p.closed {
		return ErrPoolClosed
	}
	if p.state == StateDraining {
		return p.acquireErrorLocked(ErrDraining, time.Time{})
	}
	if p.fenced {
		return p.acquireErrorLocked(ErrFenced, time.Time{})
	}
	return nil
}

// maxLocked is the pool's current share of connections: max_connections,
// or 0 while fenced.
func (p *Pool) maxLocked() int {
	if p.fenced {
		return 0
	}
	return p.cfg.Limits.MaxConnections
}

func (p *Pool) acquireErrorLocked(sentinel error, now time.Time) *AcquireError {
	e := &AcquireError{
		Err:  sentinel,
		Pool: p.name,
		Snapshot: Snapshot{
			Max:     p.maxLocked(),
			Total:   p.total,
			InUse:   len(p.leased),
			Idle:    p.idleLocked(),
			Waiters: p.waiters.Len(),
		},
		LastDialErr: p.lastDialErr,
	}
	if errors.Is(sentinel, ErrUnavailable) {
		if errors.Is(p.lastDialErr, ErrUpstreamNotAllowed) {
			// The policy refused the upstream: retrying will not help,
			// however the circuit and its backoff count the refusals.
			e.Err = ErrUpstreamNotAllowed
		} else {
			e.RetryAfter = max(p.nextDialAt.Sub(now), 0)
		}
	}
	return e
}

// leaseLocked records c, open and owned by nobody, as leased to holder.
func (p *Pool) leaseLocked(c *Conn, holder string, start, now time.Time) {
	c.state = connLeased
	c.leaseIdx = len(p.leased)
	p.leased = append(p.leased, c)
	p.leaseSeq++
	c.leaseSeq = p.leaseSeq
	c.holder = holder
	c.since = now
	c.reused = c.uses > 0
	c.uses++
	if c.reused {
		p.st.reused++
	} else {
		p.st.created++
	}
	c.waitTime = now.Sub(start)
	if c.idleSince.IsZero() {
		c.idleTime = 0
	} else {
		c.idleTime = now.Sub(c.idleSince)
	}
	c.age = now.Sub(c.created)
	if d := p.cfg.Lifecycle.MaxLeaseDuration; d > 0 {
		p.scheduleLocked(now.Add(d))
	}
	c.active.Store(true)
	p.st.acquires++
	p.st.waitTime.observe(c.waitTime)
	p.notifyLocked()
}

// unleaseLocked removes c from the leased set.
func (p *Pool) unleaseLocked(c *Conn) {
	i := c.leaseIdx
	last := len(p.leased) - 1
	p.leased[i] = p.leased[last]
	p.leased[i].leaseIdx = i
	p.leased[last] = nil
	p.leased = p.leased[:last]
	c.leaseIdx = -1
	c.holder = ""
	c.active.Store(false)
	c.state = connChecking
}

// putLocked hands c, open and owned by nobody, to the first waiter or the
// idle set. It reports the reason to close c instead (the caller discards
// it); it checks the pool's state, c's generation and lifetime, the size
// limits and max_idle.
func (p *Pool) putLocked(c *Conn, now time.Time) (CloseReason, bool) {
	if reason, bad := p.retireReasonLocked(c, now); bad {
		return reason, true
	}
	if p.state == StateActive {
		if e := p.waiters.PopFront(); e != nil {
			w := e.Value
			c.idleSince = time.Time{}
			p.leaseLocked(c, w.holder, w.start, now)
			w.ch <- waitResult{c: c}
			return 0, false
		}
	}
	if p.idleLocked() >= p.cfg.Limits.MaxIdle {
		return CloseShrink, true
	}
	c.state = connIdle
	c.idleSince = now
	p.idle.PushBack(c)
	p.scheduleLocked(p.expiryLocked(c))
	p.scheduleLocked(now.Add(p.cfg.Lifecycle.IdleTimeout))
	if p.cfg.HealthCheck.Kind != HealthNone {
		p.scheduleLocked(c.lastCheck.Add(p.cfg.HealthCheck.Interval))
	}
	p.notifyLocked()
	return 0, false
}

// scheduleLocked makes sure the maintenance loop wakes by t.
func (p *Pool) scheduleLocked(t time.Time) {
	if t.Before(p.wakeAt) {
		p.wakeAt = t
		p.kickLocked()
	}
}

// retireReasonLocked reports why c, not leased, may not be kept.
func (p *Pool) retireReasonLocked(c *Conn, now time.Time) (CloseReason, bool) {
	switch {
	case p.closed:
		return CloseClosed, true
	case p.state == StateDraining:
		return CloseDrain, true
	case p.fenced:
		return CloseShrink, true // the share is 0
	case c.gen != p.gen:
		return CloseGeneration, true
	case c.retire >= 0:
		return c.retire, true
	case p.expiredLocked(c, now):
		return CloseMaxLifetime, true
	case p.total > p.cfg.Limits.MaxConnections:
		return CloseShrink, true
	}
	return 0, false
}

// discardLocked forgets c, open and not idle, for reason; the caller closes
// it after unlocking with closeConn or closeAll, which free its slot.
func (p *Pool) discardLocked(c *Conn, reason CloseReason) {
	if c.state == connLeased {
		p.st.holdTime.observe(p.env.Now().Sub(c.since))
		p.unleaseLocked(c)
	}
	c.state = connClosed
	c.active.Store(false)
	c.closeReason = reason
	close(c.done)
	p.total--
	p.closing++
	if n := p.genCount[c.gen] - 1; n > 0 {
		p.genCount[c.gen] = n
	} else {
		delete(p.genCount, c.gen)
	}
	p.st.closes[reason]++
	p.notifyLocked()
}

// discardIdleLocked removes every idle connection for which drop returns
// true, discarding it for the returned reason, and appends it to out.
func (p *Pool) discardIdleLocked(out []*Conn, drop func(*Conn) (CloseReason, bool)) []*Conn {
	p.idle.Filter(func(c *Conn) bool {
		reason, bad := drop(c)
		if bad {
			p.discardLocked(c, reason)
			out = append(out, c)
		}
		return !bad
	})
	return out
}

// closeConn closes a discarded connection, then frees its slot: a
// replacement is dialed only once the old socket is closed, so the upstream
// never sees more than max_connections.
func (p *Pool) closeConn(c *Conn) {
	c.closeNet()
	p.mu.Lock()
	p.closing--
	p.maybeDialLocked(context.Background())
	p.mu.Unlock()
}

// closeAll is closeConn for several connections.
func (p *Pool) closeAll(cs []*Conn) {
	if len(cs) == 0 {
		return
	}
	for _, c := range cs {
		c.closeNet()
	}
	p.mu.Lock()
	p.closing -= len(cs)
	p.maybeDialLocked(context.Background())
	p.mu.Unlock()
}

// notifyLocked wakes whoever waits on Changed.
func (p *Pool) notifyLocked() {
	if p.changec != nil {
		close(p.changec)
		p.changec = nil
	}
}

// kickLocked wakes the maintenance loop to recompute its schedule.
func (p *Pool) kickLocked() {
	select {
	case p.kickc <- struct{}{}:
	default:
	}
}

// Config returns a copy of the pool's current configuration.
func (p *Pool) Config() Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	return cloneConfig(p.cfg)
}

// State returns the lifecycle state.
func (p *Pool) State() State {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// Generation returns the current generation. It starts at 1 and grows with
// every endpoint or TLS change and every Reconnect.
func (p *Pool) Generation() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gen
}

// Stats is a value snapshot of a pool.
type Stats struct {
	Pool       string
	State      State
	Generation uint64
	// Fenced: the pool's owner fenced it (see Pool.SetFence); Max is 0
	// meanwhile.
	Fenced bool
	// Protocol is the pool's configured protocol.
	Protocol Protocol
	// Gauges: Total = Idle + InUse (+ connections between two states for
	// an instant: a checkout peek, a release). Idle includes the idle
	// connections under health check. Max is this replica's current share
	// of max_connections.
	Max, Total, InUse, Idle, Dialing, Waiters int
	MinIdle                                   int
	CircuitOpen                               bool
	LastDialError                             string // "" after a successful dial

	// OldestWait is how long the longest-queued acquirer has waited so
	// far (PgBouncer's maxwait); 0 with no one queued.
	OldestWait time.Duration

	// Counters since the pool was created. Acquires = Reused + New:
	// acquires served by a connection that served a lease before (Reused)
	// or by one on its first lease (New), which a prewarmed connection
	// may be long after its dial. Waits counts the acquires that queued.
	Acquires, Reused, New, Waits, Timeouts, BacklogRejections uint64
	// Dials counts dials started; DialFailures those that failed; Opened
	// those that opened a connection. A dial cancelled by Close or a
	// fence is neither.
	Dials, DialFailures, Opened uint64
	// HealthChecks counts health checks of idle connections (including
	// failed ones); HealthFailures those that found the connection bad.
	HealthChecks, HealthFailures uint64
	Closes                       map[string]uint64 // by CloseReason.String()
	BytesIn, BytesOut            uint64
	// Endpoints has the dial counters of each configured endpoint, in
	// Config.Endpoints order.
	Endpoints []EndpointStats
	// WaitTime observes every successful acquire (0 on an idle hit),
	// DialTime every successful dial, HoldTime every ended lease.
	WaitTime, DialTime, HoldTime Histogram
}
