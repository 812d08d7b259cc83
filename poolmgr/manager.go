package poolmgr

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/poolplane/poolplane/poolmgr/engine"
	"github.com/poolplane/poolplane/poolmgr/internal/seal"
	"github.com/poolplane/poolplane/store"
)

// Action names what a change does to a pool: in a Plan (CREATE, UPDATE,
// DELETE, UNCHANGED) and in a pool's History (every value but UNCHANGED).
type Action string

// Actions.
const (
	ActionCreate    Action = "CREATE"
	ActionUpdate    Action = "UPDATE"
	ActionDelete    Action = "DELETE"
	ActionUnchanged Action = "UNCHANGED" // Plan only: nothing to write
	ActionRollback  Action = "ROLLBACK"
	ActionDrain     Action = "DRAIN"
	ActionPause     Action = "PAUSE"
	ActionResume    Action = "RESUME"
	ActionReconnect Action = "RECONNECT"
)

// ManagerConfig configures NewManager.
type ManagerConfig struct {
	// Store persists pool records. Required.
	Store Store
	// Env is passed to every pool. Its zero Now and Logger fields default
	// to the Manager's.
	Env Env
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now stamps create and update times. Default time.Now.
	Now func() time.Time
	// SecretKey, 32 bytes, encrypts client private keys in the store
	// (AES-256-GCM). Without it, pools that give a client key inline
	// (TLSConfig.ClientKeyPEM) are refused with a *ValidationError; give
	// TLSConfig.ClientKeyFile instead. Records with encrypted keys need the
	// key they were written with to be read.
	SecretKey []byte
	// Follow makes the Manager follow changes that other Managers (poold
	// replicas sharing the store, e.g. through etcd) commit: Load starts a
	// loop that watches the store and applies every pool change it did not
	// make itself to the live pools. See follow.go.
	Follow bool
	// Replicas, if set, reports the live replicas sharing the store: pools
	// whose Limits.Scope is ScopeFleet then take this replica's share of
	// their limits, re-divided whenever the membership changes, and hold
	// no share at all while Replicas.Fenced (acquires fail with
	// ErrFenced). Without it this Manager is the only replica and fleet
	// limits apply whole.
	Replicas Replicas
}

// WriteOptions go with every single-pool write.
type WriteOptions struct {
	// Actor names who made the change; it is recorded in the pool's history.
	Actor string
	// ValidateOnly checks the request and returns what would result,
	// writing nothing and touching no live pool.
	ValidateOnly bool
}

// ApplyOptions go with Apply.
type ApplyOptions struct {
	// Actor names who made the change; it is recorded in history.
	Actor string
	// Prune deletes stored pools that are not in the wanted set.
	Prune bool
	// ValidateOnly computes and returns the plan without writing anything.
	ValidateOnly bool
}

// PoolSpec is one wanted pool in Apply.
type PoolSpec struct {
	ID     string
	Config Config
}

// PlannedAction is what Apply does (or, with ValidateOnly, would do) to one pool.
type PlannedAction struct {
	ID     string
	Action Action
	// ChangedFields are the API paths of the fields an UPDATE changes.
	ChangedFields []string
	// Retired counts the connections the change recycles: for an UPDATE,
	// those Pool.Plan reports (endpoint/TLS changes, smaller limits); for a
	// DELETE, every idle and leased connection of the pool. Leased ones are
	// closed on release, never cut.
	Retired Retired
}

// Plan is the result of Apply.
type Plan struct {
	// Revision is the store revision of the committed change; if nothing
	// was written (all UNCHANGED, or ValidateOnly), the revision the plan
	// was computed at.
	Revision int64
	// Actions has one entry per wanted pool, plus one DELETE per pruned
	// pool, sorted by ID.
	Actions []PlannedAction
}

// PoolInfo is a pool's stored configuration and state.
type PoolInfo struct {
	ID string
	// Config is the effective configuration: Spec with every default
	// filled in.
	Config Config
	// Spec is the configuration as written, zero fields meaning their
	// defaults. Merge partial updates onto Spec, not Config, so that a
	// defaulted field (max_idle follows max_connections) keeps following.
	Spec  Config
	State State
	// Generation is the live pool's current generation (0 if it is not
	// running in this process). It is not persisted.
	Generation uint64
	// Revision is the store revision that last changed the pool (its etag).
	Revision int64
	// CreateRevision is the store revision that created the pool.
	CreateRevision int64
	CreateTime     time.Time
	UpdateTime     time.Time
}

// Revision is one retained version of a pool, from History.
type Revision struct {
	Revision int64
	Time     time.Time
	// Action is what wrote the version (ActionCreate, ActionUpdate,
	// ActionDrain, ...; ActionDelete for a deletion).
	Action Action
	Actor  string
	// Config and State are the pool as written; zero when Deleted.
	Config  Config
	State   State
	Deleted bool
}

// EventType is the kind of a PoolEvent.
type EventType int

// Event types.
const (
	EventPut    EventType = iota + 1 // a pool was created or changed
	EventDelete                      // a pool was deleted
)

// String returns "PUT" or "DELETE".
func (t EventType) String() string {
	switch t {
	case EventPut:
		return "PUT"
	case EventDelete:
		return "DELETE"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// PoolEvent is one committed change delivered by Watch.
type PoolEvent struct {
	Revision int64
	Type     EventType
	// Info is the pool after a PUT. For a DELETE it is the pool as it was
	// just before the delete (Revision is then its last change's revision).
	// Generation is the live pool's at delivery time.
	Info PoolInfo
}

// Manager is the registry of pools: it persists each pool's configuration
// and state in a Store and keeps a live Pool for each. Every change is
// validated, committed to the store, applied to the live pool, and only
// then answered. All methods are safe for concurrent use; writes are
// serialised so that live pools follow the store's order.
type Manager struct {
	store  Store
	env    Env
	logger *slog.Logger
	now    func() time.Time
	sealer *seal.Sealer // encrypts client keys at rest; nil without a secret key

	// wsem (size 1: a mutex whose wait honours ctx) is held by a write from
	// reading the current record through commit and live apply, so live
	// pools change in store order. It is never held by reads.
	wsem chan struct{}

	// stopCtx is cancelled by Close: it ends Watch goroutines and the
	// waits of retiring pools.
	stopCtx context.Context
	stop    context.CancelFunc
	wg      sync.WaitGroup // Watch goroutines and retiring pools' waits

	mu    sync.Mutex       // protects following fields; never held across I/O
	pools map[string]*Pool // live pools by ID
	// retiring holds deleted (or replaced) pools: draining, closed once
	// their last lease is released, or at Close. Each channel is closed
	// once its pool is closed.
	retiring map[*Pool]chan struct{}
	loaded   bool // Load was called
	closed   bool // Close was called
	// applied maps a pool ID to the store revision its live pool (or its
	// absence) reflects: the follow loop skips events at or below it.
	applied map[string]int64

	// fleet holds the stored config (defaults filled) of every live pool
	// with fleet-scoped limits, to re-divide them when replicas change.
	fleet map[string]Config
	// fenceSeq numbers fence decisions (fenceDecisionLocked); fenced is
	// the state applyFence last applied, for its log line.
	fenceSeq uint64
	fenced   bool

	follow       bool          // ManagerConfig.Follow
	donec        chan struct{} // closed when the follow loop ends; nil if none runs
	replicas     Replicas      // ManagerConfig.Replicas; may be nil
	membersDonec chan struct{} // closed when the membership loop ends; nil if none runs
}

// NewManager returns a Manager with no live pools; call Load to start the
// stored ones before serving.
func NewManager(cfg ManagerConfig) (*Manager, error) {
	if cfg.Store == nil {
		return nil, errors.New("poolmgr: ManagerConfig.Store is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	env := cfg.Env
	if env.Now == nil {
		env.Now = cfg.Now
	}
	if env.Logger == nil {
		env.Logger = cfg.Logger
	}
	if env.Upstreams == nil {
		env.Upstreams = engine.DefaultUpstreams()
	}
	var sealer *seal.Sealer
	if cfg.SecretKey != nil {
		var err error
		if sealer, err = seal.New(cfg.SecretKey); err != nil {
			return nil, fmt.Errorf("poolmgr: ManagerConfig.SecretKey: %w", err)
		}
	}
	stopCtx, stop := context.WithCancel(context.Background())
	return &Manager{
		store:    cfg.Store,
		env:      env,
		logger:   cfg.Logger,
		now:      cfg.Now,
		sealer:   sealer,
		wsem:     make(chan struct{}, 1),
		stopCtx:  stopCtx,
		stop:     stop,
		pools:    make(map[string]*Pool),
		retiring: make(map[*Pool]chan struct{}),
		applied:  make(map[string]int64),
		fleet:    make(map[string]Config),
		follow:   cfg.Follow,
		replicas: cfg.Replicas,
	}, nil
}

// Load starts a live pool for every stored pool, in its stored state. Call
// it once, before serving. A pool whose record cannot be decoded or whose
// config no longer validates is left stopped (Get still shows it; Update,
// Rollback or Delete repair it) and reported: Load returns the errors of
// every such pool joined, after starting all the others.
func (m *Manager) Load(ctx context.Context) error {
	unlock, err := m.lockWrites(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	m.mu.Lock()
	loaded := m.loaded
	m.loaded = true
	m.mu.Unlock()
	if loaded {
		return errors.New("poolmgr: Load called twice")
	}
	kvs, snapRev, err := m.store.Snapshot(ctx, keyPrefix)
	if err != nil {
		return fmt.Errorf("load pools: %w", mapStoreErr("", err))
	}
	var errs []error
	n := 0
	for _, kv := range kvs {
		id := strings.TrimPrefix(kv.Key, keyPrefix)
		m.markApplied(id, kv.ModRevision)
		if m.lookup(id) != nil {
			n++ // started by a write before Load
			continue
		}
		rec, err := decodeRecord(kv.Value, m.sealer)
		if err == nil {
			err = rec.Config.WithDefaults().Validate()
		}
		if err == nil {
			err = m.startPool(id, rec)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("load pool %s: %w", id, err))
			continue
		}
		n++
	}
	m.logger.LogAttrs(ctx, slog.LevelInfo, "pools loaded", slog.Int("pools", n), slog.Int("failed", len(errs)))
	if m.follow {
		m.startFollow(snapRev)
	}
	if m.replicas != nil {
		m.startMembership()
	}
	return errors.Join(errs...)
}

// Get returns a stored pool. It returns a *ValidationError for a bad id,
// ErrPoolNotFound, ctx's error, and ErrPoolClosed after Close.
func (m *Manager) Get(ctx context.Context, id string) (PoolInfo, error) {
	if err := m.checkRead(id); err != nil {
		return PoolInfo{}, err
	}
	rec, kv, err := m.read(ctx, id)
	if err != nil {
		return PoolInfo{}, err
	}
	return m.info(id, rec, kv.CreateRevision, kv.ModRevision), nil
}

// List returns one page of pools sorted by ID: at most pageSize (all if 0),
// starting after pageToken (from a previous List; "" for the first page).
// The returned token is "" on the last page. It returns a
// *ValidationError for a negative pageSize or a bad token, ctx's error, and
// ErrPoolClosed after Close.
func (m *Manager) List(ctx context.Context, pageSize int, pageToken string) ([]PoolInfo, string, error) {
	if err := m.checkRead(""); err != nil {
		return nil, "", err
	}
	if pageSize < 0 {
		return nil, "", &ValidationError{Violations: []FieldViolation{{Field: "page_size", Reason: fmt.Sprintf("must not be negative, got %d", pageSize)}}}
	}
	kvs, next, err := m.store.List(ctx, keyPrefix, pageSize, pageToken)
	if err != nil {
		if errors.Is(err, store.ErrInvalidArgument) && pageToken != "" {
			return nil, "", &ValidationError{Violations: []FieldViolation{{Field: "page_token", Reason: "invalid page token"}}}
		}
		return nil, "", fmt.Errorf("list pools: %w", mapStoreErr("", err))
	}
	out := make([]PoolInfo, 0, len(kvs))
	for _, kv := range kvs {
		id := strings.TrimPrefix(kv.Key, keyPrefix)
		rec, err := decodeRecord(kv.Value, m.sealer)
		if err != nil {
			return nil, "", fmt.Errorf("list pools: pool %s: %w", id, err)
		}
		out = append(out, m.info(id, rec, kv.CreateRevision, kv.ModRevision))
	}
	return out, next, nil
}

// Delete removes a pool from the store, then drains and closes the live
// pool: it grants no new lease and closes its idle connections at once;
// leased connections close when released. expectRevision 0 means any.
//
// It returns a *ValidationError for a bad id, ErrPoolNotFound, a
// *RevisionMismatchError, ctx's error, and ErrPoolClosed after Close.
// A record that no longer decodes can still be deleted.
func (m *Manager) Delete(ctx context.Context, id string, expectRevision int64, o WriteOptions) error {
	if err := ValidatePoolID(id); err != nil {
		return err
	}
	unlock, err := m.lockWrites(ctx)
	if err != nil {
		return err
	}
	defer unlock()

	kv, err := m.store.Get(ctx, poolKey(id))
	if err != nil {
		return mapStoreErr(id, err)
	}
	if expectRevision != 0 && expectRevision != kv.ModRevision {
		return &RevisionMismatchError{Pool: id, Expected: expectRevision, Current: kv.ModRevision}
	}
	if o.ValidateOnly {
		return nil
	}
	rev, err := m.store.Delete(ctx, poolKey(id), store.AtRevision(kv.ModRevision), o.Actor)
	if err != nil {
		return mapStoreErr(id, err)
	}
	m.markApplied(id, rev)
	m.stopPool(id)
	return nil
}

// Apply makes the stored pools match want, atomically. It validates every
// spec (one *ValidationError with fields prefixed "pools[i]."), plans one
// action per pool (CREATE, UPDATE, UNCHANGED, and with o.Prune DELETE for
// stored pools not wanted), commits every write in one store transaction,
// and then applies the changes to the live pools. States are kept:
// Apply changes configs only.
//
// Each write in the transaction expects the revision the plan was computed
// from, so a pool changed concurrently aborts the whole Apply with an error
// matching ErrRevisionMismatch and nothing is written. If nothing changes,
// nothing is written. With o.ValidateOnly the plan is returned unapplied.
// A stored record that does not decode fails the Apply (Delete repairs it).
// Errors of live pools after the commit are returned joined, with the plan.
func (m *Manager) Apply(ctx context.Context, want []PoolSpec, o ApplyOptions) (Plan, error) {
	specs, err := prepareSpecs(want)
	if err != nil {
		return Plan{}, err
	}
	unlock, err := m.lockWrites(ctx)
	if err != nil {
		return Plan{}, err
	}
	defer unlock()

	kvs, rev, err := m.store.Snapshot(ctx, keyPrefix)
	if err != nil {
		return Plan{}, fmt.Errorf("apply: %w", mapStoreErr("", err))
	}
	type current struct {
		rec record
		kv  store.KeyValue
	}
	cur := make(map[string]current, len(kvs))
	for _, kv := range kvs {
		id := strings.TrimPrefix(kv.Key, keyPrefix)
		rec, err := decodeRecord(kv.Value, m.sealer)
		if err != nil {
			return Plan{}, fmt.Errorf("apply: stored pool %s: %w", id, err)
		}
		cur[id] = current{rec, kv}
	}

	type change struct {
		id      string
		action  Action
		rec     record
		created int64 // CreateRevision of an updated pool
	}
	var (
		plan    = Plan{Revision: rev}
		ops     []store.Op
		changes []change
		now     = m.now()
	)
	for si, s := range specs {
		c, ok := cur[s.ID]
		if !ok {
			if err := m.checkWrite(s.Config, fmt.Sprintf("pools[%d].", si)); err != nil {
				return Plan{}, err
			}
			rec := record{Config: s.Config, State: StateActive, CreateTime: now, UpdateTime: now, Op: ActionCreate}
			val, err := encodeRecord(rec, m.sealer)
			if err != nil {
				return Plan{}, err
			}
			ops = append(ops, store.Op{Kind: store.OpPut, Key: poolKey(s.ID), Value: val, Expect: store.Absent()})
			changes = append(changes, change{id: s.ID, action: ActionCreate, rec: rec})
			plan.Actions = append(plan.Actions, PlannedAction{ID: s.ID, Action: ActionCreate})
			continue
		}
		// Compare effective configs: a field written out at its default
		// value is no change, and a default that follows another field
		// shows as changed with it.
		diff := c.rec.Config.WithDefaults().DiffFields(s.Config.WithDefaults())
		if len(diff) == 0 {
			plan.Actions = append(plan.Actions, PlannedAction{ID: s.ID, Action: ActionUnchanged})
			continue
		}
		if err := m.checkWrite(s.Config, fmt.Sprintf("pools[%d].", si)); err != nil {
			return Plan{}, err
		}
		var retired Retired
		if p := m.lookup(s.ID); p != nil {
			retired = p.Plan(s.Config.WithDefaults())
		}
		rec := c.rec
		rec.Config, rec.UpdateTime, rec.Op = s.Config, now, ActionUpdate
		val, err := encodeRecord(rec, m.sealer)
		if err != nil {
			return Plan{}, err
		}
		ops = append(ops, store.Op{Kind: store.OpPut, Key: poolKey(s.ID), Value: val, Expect: store.AtRevision(c.kv.ModRevision)})
		changes = append(changes, change{id: s.ID, action: ActionUpdate, rec: rec, created: c.kv.CreateRevision})
		plan.Actions = append(plan.Actions, PlannedAction{ID: s.ID, Action: ActionUpdate, ChangedFields: diff, Retired: retired})
	}
	if o.Prune {
		wanted := make(map[string]bool, len(specs))
		for _, s := range specs {
			wanted[s.ID] = true
		}
		for _, kv := range kvs {
			id := strings.TrimPrefix(kv.Key, keyPrefix)
			if wanted[id] {
				continue
			}
			var retired Retired
			if p := m.lookup(id); p != nil {
				st := p.Stats()
				retired = Retired{Idle: st.Idle, Leased: st.InUse}
			}
			ops = append(ops, store.Op{Kind: store.OpDelete, Key: kv.Key, Expect: store.AtRevision(kv.ModRevision)})
			changes = append(changes, change{id: id, action: ActionDelete})
			plan.Actions = append(plan.Actions, PlannedAction{ID: id, Action: ActionDelete, Retired: retired})
		}
	}
	slices.SortFunc(plan.Actions, func(a, b PlannedAction) int { return cmp.Compare(a.ID, b.ID) })
	if o.ValidateOnly || len(ops) == 0 {
		return plan, nil
	}

	rev, err = m.store.Txn(ctx, ops, o.Actor)
	if err != nil {
		var rm *store.RevisionMismatchError
		switch {
		case errors.As(err, &rm):
			return Plan{}, fmt.Errorf("apply: pool changed concurrently: %w", mapStoreErr(strings.TrimPrefix(rm.Key, keyPrefix), err))
		case errors.Is(err, store.ErrExists):
			return Plan{}, fmt.Errorf("apply: pool created concurrently: %w: %w", ErrRevisionMismatch, err)
		case errors.Is(err, store.ErrNotFound):
			return Plan{}, fmt.Errorf("apply: pool deleted concurrently: %w: %w", ErrRevisionMismatch, err)
		}
		return Plan{}, fmt.Errorf("apply: %w", mapStoreErr("", err))
	}
	plan.Revision = rev

	var errs []error
	for _, c := range changes {
		m.markApplied(c.id, rev)
		var err error
		switch c.action {
		case ActionCreate, ActionUpdate:
			err = m.applyLive(c.id, c.rec, true, false)
		case ActionDelete:
			m.stopPool(c.id)
		}
		if err != nil {
			errs = append(errs, liveErr(c.id, rev, err))
		}
	}
	return plan, errors.Join(errs...)
}

// History returns a pool's retained versions, oldest first, deletions
// included; it outlives the pool. Configs include the client key: callers
// that return them must strip it. It returns a *ValidationError for a bad
// id, ErrPoolNotFound if the pool has no history, ctx's error, and
// ErrPoolClosed after Close.
func (m *Manager) History(ctx context.Context, id string) ([]Revision, error) {
	if err := m.checkRead(id); err != nil {
		return nil, err
	}
	es, err := m.store.History(ctx, poolKey(id))
	if err != nil {
		return nil, mapStoreErr(id, err)
	}
	out := make([]Revision, 0, len(es))
	for _, e := range es {
		r, err := revisionOf(e, m.sealer)
		if err != nil {
			return nil, fmt.Errorf("pool %s: %w", id, err)
		}
		out = append(out, r)
	}
	return out, nil
}

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

// Watch delivers every committed pool change with a revision above
// fromRevision, in revision order, then live changes. Pass the Revision of
// a List/Get (or a Plan) to watch from then, or the current revision
// (CurrentRevision) for changes from now. The channel is closed when ctx
// ends, the Manager or store closes, or the watcher falls so far behind
// that the store compacted changes it still needs (watch again; that
// fails with ErrRevisionNotFound, so re-read with List).
//
// It returns ErrRevisionNotFound if fromRevision is older than the store
// retains, a *ValidationError for a negative fromRevision, ctx's error,
// and ErrPoolClosed after Close.
func (m *Manager) Watch(ctx context.Context, fromRevision int64) (<-chan PoolEvent, error) {
	if fromRevision < 0 {
		return nil, badRevision(fromRevision, "must not be negative")
	}
	ctx, cancel := context.WithCancel(ctx)
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		cancel()
		return nil, ErrPoolClosed
	}
	m.wg.Add(1) // under mu, so Close cannot be waiting already
	m.mu.Unlock()

	in, err := m.store.Watch(ctx, fromRevision)
	if err != nil {
		cancel()
		m.wg.Done()
		if errors.Is(err, store.ErrCompacted) {
			return nil, fmt.Errorf("watch from revision %d: %w: %w", fromRevision, ErrCompacted, err)
		}
		return nil, fmt.Errorf("watch: %w", mapStoreErr("", err))
	}
	// Close cancels ctx too, which ends the store's watcher and closes in.
	unhook := context.AfterFunc(m.stopCtx, cancel)
	out := make(chan PoolEvent) // unbuffered: the store's log is the buffer
	go func() {
		defer m.wg.Done()
		defer close(out)
		defer unhook()
		defer cancel()
		for ev := range in {
			pe, ok := m.event(ev)
			if !ok {
				continue
			}
			select {
			case out <- pe:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// CurrentRevision returns the store's current revision: Watch from it to
// see only changes made after the call.
func (m *Manager) CurrentRevision(ctx context.Context) (int64, error) {
	if m.isClosed() {
		return 0, ErrPoolClosed
	}
	rev, err := m.store.Revision(ctx)
	if err != nil {
		return 0, mapStoreErr("", err)
	}
	return rev, nil
}

// Close closes every pool, live or retiring, with Pool.Close semantics
// (waiters fail with ErrPoolClosed; idle and leased connections close: to
// let leases finish first, Drain and WaitDrained before Close), and ends
// every Watch. It does not close the Store. Later calls to other methods
// return ErrPoolClosed. Idempotent: later calls return nil.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	pools := m.pools
	m.pools = nil
	donec, membersDonec := m.donec, m.membersDonec
	m.mu.Unlock()
	m.stop() // retiring pools close themselves; the follow and membership loops end
	if donec != nil {
		<-donec
	}
	if membersDonec != nil {
		<-membersDonec
	}

	var errs []error
	for id, p := range pools {
		if err := p.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close pool %s: %w", id, err))
		}
	}
	m.wg.Wait()
	return errors.Join(errs...)
}

// lockWrites takes the write semaphore, giving up when ctx ends, and fails
// after Close.
func (m *Manager) lockWrites(ctx context.Context) (unlock func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	select {
	case m.wsem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if m.isClosed() {
		<-m.wsem
		return nil, ErrPoolClosed
	}
	return func() { <-m.wsem }, nil
}

func (m *Manager) isClosed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

// checkRead validates id (if not "") and fails after Close.
func (m *Manager) checkRead(id string) error {
	if id != "" {
		if err := ValidatePoolID(id); err != nil {
			return err
		}
	}
	if m.isClosed() {
		return ErrPoolClosed
	}
	return nil
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

// read returns a pool's decoded record and store metadata.
func (m *Manager) read(ctx context.Context, id string) (record, store.KeyValue, error) {
	kv, err := m.store.Get(ctx, poolKey(id))
	if err != nil {
		return record{}, store.KeyValue{}, mapStoreErr(id, err)
	}
	rec, err := decodeRecord(kv.Value, m.sealer)
	if err != nil {
		return record{}, store.KeyValue{}, fmt.Errorf("pool %s: %w", id, err)
	}
	return rec, kv, nil
}

// readExpect is read, checking expectRevision (0: any) against ModRevision.
func (m *Manager) readExpect(ctx context.Context, id string, expectRevision int64) (record, store.KeyValue, error) {
	if expectRevision != 0 {
		// Check the revision before decoding: a stale etag on a record
		// that no longer decodes is still a mismatch.
		kv, err := m.store.Get(ctx, poolKey(id))
		if err != nil {
			return record{}, store.KeyValue{}, mapStoreErr(id, err)
		}
		if kv.ModRevision != expectRevision {
			return record{}, store.KeyValue{}, &RevisionMismatchError{Pool: id, Expected: expectRevision, Current: kv.ModRevision}
		}
	}
	rec, kv, err := m.read(ctx, id)
	if err == nil && expectRevision != 0 && kv.ModRevision != expectRevision {
		err = &RevisionMismatchError{Pool: id, Expected: expectRevision, Current: kv.ModRevision}
	}
	return rec, kv, err
}

// put encodes and writes one record.
func (m *Manager) put(ctx context.Context, id string, rec record, expect store.Expect, actor string) (int64, error) {
	val, err := encodeRecord(rec, m.sealer)
	if err != nil {
		return 0, fmt.Errorf("pool %s: %w", id, err)
	}
	rev, err := m.store.Put(ctx, poolKey(id), val, expect, actor)
	if err != nil {
		return 0, mapStoreErr(id, err)
	}
	m.markApplied(id, rev)
	return rev, nil
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

// info builds a PoolInfo from a record, with the live generation.
func (m *Manager) info(id string, rec record, createRev, modRev int64) PoolInfo {
	var gen uint64
	if p := m.lookup(id); p != nil {
		gen = p.Generation()
	}
	return PoolInfo{
		ID:             id,
		Config:         rec.Config.WithDefaults(),
		Spec:           rec.Config,
		State:          rec.State,
		Generation:     gen,
		Revision:       modRev,
		CreateRevision: createRev,
		CreateTime:     rec.CreateTime,
		UpdateTime:     rec.UpdateTime,
	}
}

// event converts a store event under keyPrefix; ok is false for other keys
// and for records that do not decode (logged).
func (m *Manager) event(ev store.Event) (PoolEvent, bool) {
	id, ok := strings.CutPrefix(ev.KV.Key, keyPrefix)
	if !ok {
		return PoolEvent{}, false
	}
	rec, err := decodeRecord(ev.KV.Value, m.sealer)
	if err != nil {
		m.logger.LogAttrs(context.Background(), slog.LevelError, "watch: undecodable pool record",
			slog.String("pool", id), slog.Int64("revision", ev.Revision), slog.Any("error", err))
		if ev.Action != store.ActionDelete {
			return PoolEvent{}, false
		}
		rec = record{}
	}
	pe := PoolEvent{Revision: ev.Revision, Type: EventPut, Info: m.info(id, rec, ev.KV.CreateRevision, ev.KV.ModRevision)}
	if ev.Action == store.ActionDelete {
		pe.Type = EventDelete
	}
	return pe, true
}

// revisionOf converts a history entry.
func revisionOf(e store.HistoryEntry, s *seal.Sealer) (Revision, error) {
	r := Revision{Revision: e.Revision, Time: e.Time, Actor: e.Actor}
	if e.Action == store.ActionDelete {
		r.Action, r.Deleted = ActionDelete, true
		return r, nil
	}
	rec, err := decodeRecord(e.Value, s)
	if err != nil {
		return Revision{}, fmt.Errorf("revision %d: %w", e.Revision, err)
	}
	r.Action, r.Config, r.State = rec.Op, rec.Config, rec.State
	if r.Action == "" {
		r.Action = ActionUpdate
	}
	return r, nil
}

// prepare validates cfg with its defaults filled in and returns it as
// written (zero fields still meaning their defaults, so a default that
// follows another field keeps following it), copying its slices and maps
// so the caller's cannot alias stored ones.
func prepare(cfg Config) (Config, error) {
	cfg.Endpoints = slices.Clone(cfg.Endpoints)
	if cfg.Labels != nil {
		l := make(map[string]string, len(cfg.Labels))
		for k, v := range cfg.Labels {
			l[k] = v
		}
		cfg.Labels = l
	}
	if err := cfg.WithDefaults().Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// prepareSpecs validates every spec of Apply and returns them with defaults
// filled in; violations of spec i are prefixed "pools[i].".
func prepareSpecs(want []PoolSpec) ([]PoolSpec, error) {
	var vs []FieldViolation
	out := make([]PoolSpec, len(want))
	seen := make(map[string]int, len(want))
	for i, s := range want {
		prefix := fmt.Sprintf("pools[%d].", i)
		var verr *ValidationError
		if err := ValidatePoolID(s.ID); errors.As(err, &verr) {
			for _, v := range verr.Violations {
				vs = append(vs, FieldViolation{Field: prefix + v.Field, Reason: v.Reason})
			}
		} else if j, dup := seen[s.ID]; dup {
			vs = append(vs, FieldViolation{Field: prefix + "name", Reason: fmt.Sprintf("pool %q is also pools[%d]", s.ID, j)})
		} else {
			seen[s.ID] = i
		}
		cfg, err := prepare(s.Config)
		if errors.As(err, &verr) {
			for _, v := range verr.Violations {
				vs = append(vs, FieldViolation{Field: prefix + v.Field, Reason: v.Reason})
			}
		} else if err != nil {
			return nil, err
		}
		out[i] = PoolSpec{ID: s.ID, Config: cfg}
	}
	if len(vs) > 0 {
		return nil, &ValidationError{Violations: vs}
	}
	return out, nil
}

// checkWrite applies the write-time policies to a config about to be
// stored: every endpoint must pass the upstream policy (an error wrapping
// ErrUpstreamNotAllowed), and an inline client key needs a secret key to
// be stored encrypted (a *ValidationError). prefix is prepended to field
// names ("pools[3]." in Apply).
func (m *Manager) checkWrite(cfg Config, prefix string) error {
	if cfg.TLS.ClientKeyPEM != "" && m.sealer == nil {
		return &ValidationError{Violations: []FieldViolation{{Field: prefix + "tls.client_key_pem",
			Reason: "inline private keys are refused: poold keeps them only encrypted, and runs without --secret-key-file; " +
				"give tls.client_key_file (a path on the poold host) instead, or start poold with --secret-key-file"}}}
	}
	for i, ep := range cfg.Endpoints {
		if err := m.env.Upstreams.AllowEndpoint(ep); err != nil {
			return fmt.Errorf("%sendpoints[%d]: %w", prefix, i, err)
		}
	}
	return nil
}

// mapStoreErr turns a store error about pool id (or "") into poolmgr's.
func mapStoreErr(id string, err error) error {
	what := "store"
	if id != "" {
		what = "pool " + id
	}
	var rm *store.RevisionMismatchError
	switch {
	case errors.As(err, &rm):
		return &RevisionMismatchError{Pool: id, Expected: rm.Expected, Current: rm.Current}
	case errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("%s: %w", what, ErrPoolNotFound)
	case errors.Is(err, store.ErrExists):
		return fmt.Errorf("%s: %w", what, ErrPoolExists)
	case errors.Is(err, store.ErrClosed):
		return fmt.Errorf("%s: %w: %w", what, ErrPoolClosed, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// liveErr reports a live pool that did not follow a committed change.
func liveErr(id string, rev int64, err error) error {
	return fmt.Errorf("pool %s: committed at revision %d, but the live pool did not follow: %w", id, rev, err)
}

func badRevision(rev int64, reason string) error {
	return &ValidationError{Violations: []FieldViolation{{Field: "revision", Reason: fmt.Sprintf("revision %d: %s", rev, reason)}}}
}

// Backuper is implemented by stores that can write a consistent snapshot of
// their whole database; *store.Store does.
type Backuper interface {
	Backup(w io.Writer) (int64, error)
}

// ContextBackuper is implemented by stores that read their snapshot over
// the network, bounded by ctx, and write it in the bbolt store's file
// format; *etcdstore.Store does.
type ContextBackuper interface {
	BackupContext(ctx context.Context, w io.Writer) (int64, error)
}

// Backup writes a consistent snapshot of the store's database to w and
// returns its size: a bbolt store file (package store's format) whichever
// backend the Manager runs on, so a backup of an etcd-backed fleet starts
// a single poold --store bolt. The snapshot is taken into a temporary
// file first, so the store's read transaction never waits on w (a
// network stream). It returns an error wrapping errors.ErrUnsupported if
// the store cannot back up. Safe for concurrent use.
func (m *Manager) Backup(ctx context.Context, w io.Writer) (int64, error) {
	cb, isCtx := m.store.(ContextBackuper)
	b, ok := m.store.(Backuper)
	if !ok && !isCtx {
		return 0, fmt.Errorf("backup: %w", errors.ErrUnsupported)
	}
	f, err := os.CreateTemp("", "poolplane-backup-*.db")
	if err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	defer func() {
		_ = f.Close() // a second Close after a successful copy is harmless
		_ = os.Remove(f.Name())
	}()
	if isCtx {
		_, err = cb.BackupContext(ctx, f)
	} else {
		_, err = b.Backup(f)
	}
	if err != nil {
		return 0, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	n, err := io.Copy(ctxWriter{ctx: ctx, w: w}, f)
	if err != nil {
		return n, fmt.Errorf("backup: %w", err)
	}
	return n, nil
}

// ctxWriter stops a copy once ctx ends.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}
