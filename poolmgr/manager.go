package poolmgr

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
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
	// SecretKey, 32 bytes, encrypts client private keys and Redis and
	// PostgreSQL passwords in the store (AES-256-GCM). Without it, pools
	// that give a client key inline (TLSConfig.ClientKeyPEM) or a password
	// (RedisSetup.Password, PostgresSetup.Password) are refused with a
	// *ValidationError; give TLSConfig.ClientKeyFile instead of a key.
	// Records with encrypted secrets need the key they were written with
	// to be read.
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
	// Listeners, if set, opens and closes the pools' local listeners
	// (Config.Listeners) as pools change: a write whose listener cannot be
	// opened fails before it is committed.
	Listeners ListenerHost
}

// WriteOptions go with every single-pool write.
type WriteOptions struct {
	// Actor names who made the change; it is recorded in the pool's history.
	Actor string
	// ValidateOnly checks the request and returns what would result,
	// writing nothing and touching no live pool.
	ValidateOnly bool
	// KeepClientKey (Update only): a config that gives the stored client
	// certificate but neither a client key nor a key file keeps the stored
	// key (see keepStoredKey), so that a pool read back, which never
	// carries the key, can be written back whole.
	KeepClientKey bool
	// KeepRedisPassword (Update only): a REDIS config that gives the stored
	// Redis username but no password keeps the stored password (see
	// keepStoredKey), for the same reason.
	KeepRedisPassword bool
	// KeepPostgresPassword (Update only): a POSTGRES config that gives the
	// stored user but no password keeps the stored password (see
	// keepStoredKey), for the same reason.
	KeepPostgresPassword bool
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
	listeners    ListenerHost  // ManagerConfig.Listeners; may be nil
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

		listeners: cfg.Listeners,
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
	cfg = cloneConfig(cfg)
	if err := cfg.WithDefaults().Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// cloneConfig returns cfg with its slices and maps copied.
func cloneConfig(cfg Config) Config {
	cfg.Endpoints = slices.Clone(cfg.Endpoints)
	cfg.Listeners = slices.Clone(cfg.Listeners)
	if cfg.Labels != nil {
		l := make(map[string]string, len(cfg.Labels))
		for k, v := range cfg.Labels {
			l[k] = v
		}
		cfg.Labels = l
	}
	cfg.Postgres.Params = maps.Clone(cfg.Postgres.Params)
	return cfg
}

// checkWrite applies the write-time policies to a config about to be
// stored: every endpoint must pass the upstream policy (an error wrapping
// ErrUpstreamNotAllowed), and an inline client key or a Redis or PostgreSQL
// password needs a secret key to be stored encrypted (a *ValidationError).
// prefix is prepended to field names ("pools[3]." in Apply).
func (m *Manager) checkWrite(cfg Config, prefix string) error {
	if cfg.TLS.ClientKeyPEM != "" && m.sealer == nil {
		return &ValidationError{Violations: []FieldViolation{{Field: prefix + "tls.client_key_pem",
			Reason: "inline private keys are refused: poold keeps them only encrypted, and runs without --secret-key-file; " +
				"give tls.client_key_file (a path on the poold host) instead, or start poold with --secret-key-file"}}}
	}
	if cfg.Redis.Password != "" && m.sealer == nil {
		return &ValidationError{Violations: []FieldViolation{{Field: prefix + "redis.password",
			Reason: "Redis passwords are refused: poold keeps them only encrypted, and runs without --secret-key-file; " +
				"start poold with --secret-key-file"}}}
	}
	if cfg.Postgres.Password != "" && m.sealer == nil {
		return &ValidationError{Violations: []FieldViolation{{Field: prefix + "postgres.password",
			Reason: "PostgreSQL passwords are refused: poold keeps them only encrypted, and runs without --secret-key-file; " +
				"start poold with --secret-key-file"}}}
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
