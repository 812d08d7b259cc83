package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultMemberTTL is the etcd lease TTL of a replica's registration: a
// replica that dies or loses etcd leaves the member set this long after.
const DefaultMemberTTL = 5 * time.Second

// MemberConfig configures [Store.JoinWith].
type MemberConfig struct {
	// ID names this replica in the member set: unique per replica (e.g.
	// host and listen address), without a slash. Required.
	ID string
	// TTL is the etcd lease TTL asked for, rounded down to whole seconds
	// (at least 1 s). Default DefaultMemberTTL. etcd may grant a longer
	// one (its floor is 1.5 election timeouts, 1.5 s by default); the
	// granted TTL is the one used.
	TTL time.Duration
	// FenceMargin is taken off the moment the registration is certainly
	// alive until (see Membership) to fence a little earlier: it absorbs
	// the time between the fence and the pools letting go of their
	// connections, and any difference in clock rate between this host and
	// the etcd leader. Default: a fifth of the granted TTL. It must be
	// less than half the TTL.
	FenceMargin time.Duration
	// Logger receives a line when the replica is fenced and when it is
	// un-fenced. Default slog.Default().
	Logger *slog.Logger
	// Now reads the local clock that fencing is decided on. It must be
	// monotonic (time.Now is: durations between its readings use the
	// monotonic clock). Default time.Now.
	Now func() time.Time
}

// Membership registers one replica under P/replicas/<id> with an etcd
// lease and follows the set of registered replicas. It implements
// poolmgr.Replicas. Its methods are safe for concurrent use.
//
// # Fencing
//
// The lease is kept alive by Membership's own loop, one KeepAliveOnce
// every TTL/3, so that it knows, on its local clock, until when the
// registration is certainly alive: it reads the clock just before sending
// each renewal (or the Grant), and when the renewal succeeds etcd cannot
// expire the lease before that send time plus the TTL it returned (the
// leader renews on receipt, later than the send, and a leader change only
// extends leases). That moment minus MemberConfig.FenceMargin is the
// fence deadline. When it passes without a successful renewal, the replica
// is fenced: Fenced reports true and Changed is closed, and a Manager then
// holds no share of any fleet limit (see poolmgr.Replicas). Every call to
// etcd is bounded by the fence deadline, so the fence is never late
// because a call hangs on an unreachable etcd.
//
// Because the other replicas grow only once etcd expires the lease, which
// is after the fence deadline, a fenced replica has stopped dialing (and
// closed its idle connections) before any other replica can take its
// share: what overshoot is left are the connections leased on the fenced
// replica at that moment, until their leases end.
//
// While fenced, the loop keeps trying etcd. When a renewal succeeds (the
// partition was shorter than the TTL) or, after the lease expired, a new
// lease is granted and the key put again under the same id, it reads the
// member set afresh and un-fences: Changed is closed, and the Manager
// re-divides its shares. A replica that re-registers after its lease
// expired is, to the others, a replica that starts (docs/scale-out.md).
//
// A replica is also fenced before its first registration (until WaitReady
// returns) and after Close.
type Membership struct {
	cli    *clientv3.Client
	prefix string // P/replicas/
	self   string // prefix + id
	id     string
	ttl    time.Duration // requested
	margin time.Duration // MemberConfig.FenceMargin; 0: a fifth of the granted TTL
	logger *slog.Logger
	now    func() time.Time

	cancel context.CancelFunc
	donec  chan struct{} // closed when run returns
	readyc chan struct{} // closed at the first registration; only run closes it

	mu       sync.Mutex // protects following fields
	members  map[string]bool
	fenced   bool
	changedc chan struct{} // closed and replaced at every change
}

// Join is JoinWith(MemberConfig{ID: id, TTL: ttl}).
func (s *Store) Join(id string, ttl time.Duration) (*Membership, error) {
	return s.JoinWith(MemberConfig{ID: id, TTL: ttl})
}

// JoinWith registers this replica as cfg.ID, and starts keeping the
// registration alive and following the member set. It returns without
// waiting for etcd; until the first registration the replica is fenced
// and counts only itself. Close leaves. It returns an error for an empty
// id or one with a slash, a FenceMargin of half the TTL or more, and once
// the Store is closed.
func (s *Store) JoinWith(cfg MemberConfig) (*Membership, error) {
	if cfg.ID == "" || strings.Contains(cfg.ID, "/") {
		return nil, fmt.Errorf("etcdstore: replica id %q: empty or has a slash", cfg.ID)
	}
	if err := s.check(context.Background()); err != nil {
		return nil, err
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultMemberTTL
	}
	if cfg.FenceMargin < 0 || 2*cfg.FenceMargin >= cfg.TTL {
		return nil, fmt.Errorf("etcdstore: fence margin %v: not below half the TTL %v", cfg.FenceMargin, cfg.TTL)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := s.watchPrefix + "replicas/"
	ms := &Membership{
		cli:      s.cli,
		prefix:   p,
		self:     p + cfg.ID,
		id:       cfg.ID,
		ttl:      cfg.TTL,
		margin:   cfg.FenceMargin,
		logger:   cfg.Logger,
		now:      cfg.Now,
		cancel:   cancel,
		donec:    make(chan struct{}),
		readyc:   make(chan struct{}),
		members:  map[string]bool{},
		fenced:   true,
		changedc: make(chan struct{}),
	}
	go ms.run(ctx)
	return ms, nil
}

// WaitReady waits until this replica is registered and has read the member
// set once, or ctx ends (returning its error). Until then the replica is
// fenced (no share of fleet limits): call WaitReady before starting pools
// so that fleet pools serve from the start.
func (ms *Membership) WaitReady(ctx context.Context) error {
	select {
	case <-ms.readyc:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("etcdstore: join the replica set: %w", ctx.Err())
	}
}

// Members returns this replica's rank among the live replicas, ordered by
// id, and their number (itself included). While fenced it returns what it
// last read (plus itself); the share it implies does not apply then.
func (ms *Membership) Members() (rank, n int) {
	keys := ms.keys()
	return slices.Index(keys, ms.self), len(keys)
}

// keys returns the registration keys of the live replicas, this one
// included, sorted: rank order.
func (ms *Membership) keys() []string {
	ms.mu.Lock()
	keys := make([]string, 0, len(ms.members)+1)
	for k := range ms.members {
		keys = append(keys, k)
	}
	ms.mu.Unlock()
	if !slices.Contains(keys, ms.self) {
		keys = append(keys, ms.self)
	}
	slices.Sort(keys)
	return keys
}

// ID returns this replica's id.
func (ms *Membership) ID() string { return strings.TrimPrefix(ms.self, ms.prefix) }

// List returns the ids of the live replicas, this one included, in rank
// order: the set Members counts.
func (ms *Membership) List() []string {
	keys := ms.keys()
	for i, k := range keys {
		keys[i] = strings.TrimPrefix(k, ms.prefix)
	}
	return keys
}

// Fenced reports whether this replica may have lost its registration: not
// registered yet, its fence deadline passed without a renewal (see
// Membership), or closed. A fenced replica must hold no share of any
// fleet limit. Changed is closed whenever it changes.
func (ms *Membership) Fenced() bool {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return ms.fenced
}

// Changed returns a channel closed at the next change of the member set or
// of Fenced.
func (ms *Membership) Changed() <-chan struct{} {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return ms.changedc
}

// Close fences this replica, stops following, revokes the registration
// (so the others re-divide at once rather than after the TTL; bounded by
// one second, etcd may be gone) and waits for the background loop. It is
// idempotent and returns nil.
func (ms *Membership) Close() error {
	ms.cancel()
	<-ms.donec
	return nil
}

// set replaces the member set, signalling a change.
func (ms *Membership) set(members map[string]bool) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if len(members) == len(ms.members) {
		same := true
		for k := range members {
			if !ms.members[k] {
				same = false
				break
			}
		}
		if same {
			return
		}
	}
	ms.members = members
	ms.changedLocked()
}

// setFenced sets Fenced, signalling a change; it reports whether it
// changed.
func (ms *Membership) setFenced(fenced bool) bool {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if ms.fenced == fenced {
		return false
	}
	ms.fenced = fenced
	ms.changedLocked()
	return true
}

func (ms *Membership) changedLocked() {
	close(ms.changedc)
	ms.changedc = make(chan struct{})
}

// fenceDeadline returns until when a registration renewed (or granted) by
// a request sent at sent, answered with ttl, counts as alive on the local
// clock: etcd expires it no earlier than sent+ttl.
func fenceDeadline(sent time.Time, ttl, margin time.Duration) time.Time {
	return sent.Add(ttl - margin)
}

// retryInterval is the pause after a failed call to etcd: a tenth of the
// TTL, within [50ms, 500ms].
func retryInterval(ttl time.Duration) time.Duration {
	return min(max(ttl/10, 50*time.Millisecond), 500*time.Millisecond)
}

// keeper is the state of the run loop, owned by its goroutine.
type keeper struct {
	lease    clientv3.LeaseID // 0: none
	ttl      time.Duration    // granted (requested until the first grant)
	deadline time.Time        // fence deadline of lease; zero without one
	fenced   bool             // as last set through setFenced
	synced   bool             // key put and member set read under lease, watch running
	nextKA   time.Time        // next renewal
	retryAt  time.Time        // next grant or sync attempt after a failure
	lastOK   time.Time        // send time of the last successful renewal
	lastErr  error            // of the last failed call
	members  map[string]bool
	wch      clientv3.WatchChan // nil unless synced
	wcancel  context.CancelFunc
}

// run keeps the registration alive, fences and un-fences, and follows the
// member set, until ctx ends. Every etcd call is bounded (opCtx), so the
// fence deadline is checked on time.
func (ms *Membership) run(ctx context.Context) {
	defer close(ms.donec)
	k := &keeper{ttl: ms.ttl, wcancel: func() {}}
	defer func() {
		k.wcancel()
		ms.fence(k, "replica leaving")
		if k.lease != 0 {
			// Leave at once rather than after the TTL; bounded, etcd may be gone.
			rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
			_, _ = ms.cli.Revoke(rctx, k.lease)
			rcancel()
		}
	}()
	k.fenced = true
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for ctx.Err() == nil {
		now := ms.now()
		if !k.fenced && !now.Before(k.deadline) {
			ms.fence(k, "registration renewal overdue")
		}
		switch {
		case k.lease == 0 && !now.Before(k.retryAt):
			ms.grant(ctx, k)
		case k.lease != 0 && !now.Before(k.nextKA):
			ms.renew(ctx, k)
		case k.lease != 0 && !k.synced && !now.Before(k.retryAt):
			ms.sync(ctx, k)
		default:
			wake := k.retryAt
			if k.lease != 0 {
				if k.synced || k.nextKA.Before(wake) {
					wake = k.nextKA
				}
				if !k.fenced && k.deadline.Before(wake) {
					wake = k.deadline
				}
			}
			timer.Reset(max(wake.Sub(now), 0))
			select {
			case <-timer.C:
			case wr, open := <-k.wch:
				ms.watched(k, wr, open)
			case <-ctx.Done():
			}
			timer.Stop() // Go 1.23+: no stale tick is left to drain
		}
	}
}

// opCtx bounds one etcd call: by TTL/3, and while not fenced by the fence
// deadline, so that a hanging call cannot delay the fence.
func (ms *Membership) opCtx(ctx context.Context, k *keeper, now time.Time) (context.Context, context.CancelFunc) {
	d := k.ttl / 3
	if !k.fenced && k.lease != 0 {
		d = min(d, k.deadline.Sub(now))
	}
	return context.WithTimeout(ctx, max(d, 0))
}

func (ms *Membership) failed(k *keeper, now time.Time, err error) {
	k.lastErr = err
	k.retryAt = now.Add(retryInterval(k.ttl))
}

func (ms *Membership) marginFor(ttl time.Duration) time.Duration {
	if ms.margin > 0 {
		return ms.margin
	}
	return ttl / 5
}

// grant starts a new lease; the key is put by sync.
func (ms *Membership) grant(ctx context.Context, k *keeper) {
	sent := ms.now()
	cctx, cancel := ms.opCtx(ctx, k, sent)
	resp, err := ms.cli.Grant(cctx, int64(max(ms.ttl/time.Second, 1)))
	cancel()
	if err != nil {
		ms.failed(k, ms.now(), fmt.Errorf("grant lease: %w", err))
		return
	}
	k.lease = clientv3.LeaseID(resp.ID)
	k.ttl = time.Duration(resp.TTL) * time.Second
	k.deadline = fenceDeadline(sent, k.ttl, ms.marginFor(k.ttl))
	k.nextKA = sent.Add(k.ttl / 3)
	k.lastOK = sent
	k.synced = false
	k.retryAt = time.Time{}
}

// renew sends one keepalive. Success moves the fence deadline; a lease
// that etcd no longer knows fences the replica and starts a new one.
func (ms *Membership) renew(ctx context.Context, k *keeper) {
	sent := ms.now()
	cctx, cancel := ms.opCtx(ctx, k, sent)
	resp, err := ms.cli.KeepAliveOnce(cctx, k.lease)
	cancel()
	now := ms.now()
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		k.lastErr = fmt.Errorf("renew lease %x: %w", int64(k.lease), err)
		ms.fence(k, "registration expired")
		k.lease, k.deadline = 0, time.Time{}
		k.retryAt = time.Time{} // grant at once
	case err != nil:
		k.lastErr = fmt.Errorf("renew lease %x: %w", int64(k.lease), err)
		k.nextKA = now.Add(retryInterval(k.ttl))
	default:
		k.ttl = time.Duration(resp.TTL) * time.Second
		if d := fenceDeadline(sent, k.ttl, ms.marginFor(k.ttl)); d.After(k.deadline) {
			k.deadline = d
		}
		k.lastOK = sent
		k.nextKA = sent.Add(k.ttl / 3)
		if k.fenced {
			// Re-register and re-read the member set (sync) before
			// un-fencing: what was seen before may be stale.
			k.synced, k.retryAt = false, time.Time{}
		}
	}
}

// sync puts the key under the lease, reads the member set, watches it
// from there and un-fences if the fence deadline is still ahead.
func (ms *Membership) sync(ctx context.Context, k *keeper) {
	k.wcancel()
	k.wch, k.wcancel = nil, func() {}
	now := ms.now()
	cctx, cancel := ms.opCtx(ctx, k, now)
	defer cancel()
	if _, err := ms.cli.Put(cctx, ms.self, "", clientv3.WithLease(k.lease)); err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			k.lease, k.deadline = 0, time.Time{}
		}
		ms.failed(k, ms.now(), fmt.Errorf("register %s: %w", ms.id, err))
		return
	}
	resp, err := ms.cli.Get(cctx, ms.prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		ms.failed(k, ms.now(), fmt.Errorf("read the replica set: %w", err))
		return
	}
	members := make(map[string]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		members[string(kv.Key)] = true
	}
	k.members = members
	ms.set(members)
	wctx, wcancel := context.WithCancel(ctx)
	k.wch = ms.cli.Watch(clientv3.WithRequireLeader(wctx), ms.prefix, clientv3.WithPrefix(),
		clientv3.WithRev(resp.Header.Revision+1))
	k.wcancel = wcancel
	k.synced = true
	k.retryAt = time.Time{}
	if now := ms.now(); k.fenced && now.Before(k.deadline) {
		ms.unfence(k, now)
	}
}

// watched applies one watch response; a broken watch is re-read by sync.
func (ms *Membership) watched(k *keeper, wr clientv3.WatchResponse, open bool) {
	if !open || wr.Err() != nil || wr.Canceled {
		k.wcancel()
		k.wch, k.wcancel, k.synced = nil, func() {}, false
		return
	}
	next := make(map[string]bool, len(k.members))
	for key := range k.members {
		next[key] = true
	}
	for _, ev := range wr.Events {
		if ev.Type == mvccpb.DELETE {
			if string(ev.Kv.Key) == ms.self {
				// Expired, or deleted by hand: fence until sync puts it back.
				ms.fence(k, "registration deleted")
				return
			}
			delete(next, string(ev.Kv.Key))
		} else {
			next[string(ev.Kv.Key)] = true
		}
	}
	k.members = next
	ms.set(next)
}

// fence marks the replica fenced and stops following until sync.
func (ms *Membership) fence(k *keeper, why string) {
	k.wcancel()
	k.wch, k.wcancel, k.synced = nil, func() {}, false
	k.fenced = true
	if !ms.setFenced(true) {
		return
	}
	attrs := []slog.Attr{slog.String("replica", ms.id), slog.String("reason", why),
		slog.Time("fence_deadline", k.deadline), slog.Duration("since_last_renewal", ms.now().Sub(k.lastOK))}
	if k.lastErr != nil {
		attrs = append(attrs, slog.Any("error", k.lastErr))
	}
	level := slog.LevelWarn
	if why == "replica leaving" {
		level = slog.LevelDebug // Close: the caller knows
	}
	ms.logger.LogAttrs(context.Background(), level, "replica fenced: no share of fleet limits", attrs...)
}

// unfence marks the replica registered; the first time, WaitReady returns.
// The log line comes before the state others read (Fenced), so whoever
// sees the replica un-fenced finds the line written.
func (ms *Membership) unfence(k *keeper, now time.Time) {
	k.fenced = false
	select {
	case <-ms.readyc:
		ms.logger.LogAttrs(context.Background(), slog.LevelInfo, "replica unfenced: registered again",
			slog.String("replica", ms.id), slog.Int("replicas", len(k.members)),
			slog.Duration("deadline_in", k.deadline.Sub(now)))
		ms.setFenced(false)
	default:
		ms.setFenced(false)
		close(ms.readyc)
	}
	k.lastErr = nil
}
