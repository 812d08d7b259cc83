package poolmgr

import (
	"context"
	"errors"
	"fmt"

	"github.com/poolplane/poolplane/store"
)

// readMode says what a write expects to find stored.
type readMode int

const (
	readExisting readMode = iota // the pool must exist (at write.expect, if set)
	readAbsent                   // the pool must not exist: Create
	readEither                   // either: Rollback re-creates a deleted pool
)

// write is one single-pool change, as the pipeline of Manager.write runs it.
type write struct {
	read   readMode
	expect int64 // with readExisting: the revision the pool must be at (0: any)
	// before runs first under the write lock, before the read (nil: none).
	before func() error
	// mutate turns the stored record (the zero record when none was found)
	// into the one to write, and reports whether there is anything to
	// write; false is a no-op, answered with the stored version.
	mutate func(rec *record, found bool) (bool, error)
	// apply brings the live pool to rec after the commit; required unless
	// read is readAbsent. A pool created by the write is started instead.
	apply func(rec record) error
}

// write is the pipeline every single-pool write but Delete runs: take the
// write lock; read the stored record; mutate it, answering the stored
// version when nothing changes; with o.ValidateOnly, answer what would be
// written; else put it (expecting the revision read, or absence), apply it
// to the live pool and answer. A live pool that does not follow is reported
// with liveErr; the commit stands.
func (m *Manager) write(ctx context.Context, id string, o WriteOptions, w write) (PoolInfo, error) {
	unlock, err := m.lockWrites(ctx)
	if err != nil {
		return PoolInfo{}, err
	}
	defer unlock()

	if w.before != nil {
		if err := w.before(); err != nil {
			return PoolInfo{}, err
		}
	}
	var (
		rec   record
		kv    store.KeyValue
		found = true
	)
	switch w.read {
	case readAbsent:
		found = false
		// A dry run checks by reading; a real write by the put's
		// precondition.
		if o.ValidateOnly {
			switch _, err := m.store.Get(ctx, poolKey(id)); {
			case err == nil:
				return PoolInfo{}, fmt.Errorf("pool %s: %w", id, ErrPoolExists)
			case !errors.Is(err, store.ErrNotFound):
				return PoolInfo{}, mapStoreErr(id, err)
			}
		}
	case readEither:
		rec, kv, err = m.read(ctx, id)
		if errors.Is(err, ErrPoolNotFound) {
			rec, kv, err, found = record{}, store.KeyValue{}, nil, false
		}
	default:
		rec, kv, err = m.readExpect(ctx, id, w.expect)
	}
	if err != nil {
		return PoolInfo{}, err
	}
	changed, err := w.mutate(&rec, found)
	if err != nil {
		return PoolInfo{}, err
	}
	if changed {
		// Listeners first: one that cannot be opened fails the write
		// before anything is committed.
		abort, err := m.prepareListeners(id, rec.Config, "")
		if err != nil {
			return PoolInfo{}, err
		}
		defer abort()
	}
	if !changed || o.ValidateOnly {
		return m.info(id, rec, kv.CreateRevision, kv.ModRevision), nil
	}
	expect := store.AtRevision(kv.ModRevision)
	if !found {
		expect = store.Absent()
	}
	rev, err := m.put(ctx, id, rec, expect, o.Actor)
	if err != nil {
		return PoolInfo{}, err
	}
	createRev := kv.CreateRevision
	switch {
	case !found:
		createRev = rev
		err = m.startPool(id, rec)
	default:
		err = w.apply(rec)
	}
	if err != nil {
		return PoolInfo{}, liveErr(id, rev, err)
	}
	return m.info(id, rec, createRev, rev), nil
}

// Create stores a new pool in state ACTIVE and starts it. cfg is stored
// with its defaults filled in.
//
// It returns a *ValidationError (ErrInvalidConfig) for a bad id or config,
// ErrPoolExists if the id is taken, ctx's error, and ErrPoolClosed after
// Close. With o.ValidateOnly it returns what would be created.
func (m *Manager) Create(ctx context.Context, id string, cfg Config, o WriteOptions) (PoolInfo, error) {
	if err := ValidatePoolID(id); err != nil {
		return PoolInfo{}, err
	}
	cfg, err := prepare(cfg)
	if err != nil {
		return PoolInfo{}, err
	}
	if err := m.checkWrite(cfg, ""); err != nil {
		return PoolInfo{}, err
	}
	return m.write(ctx, id, o, write{
		read: readAbsent,
		mutate: func(rec *record, _ bool) (bool, error) {
			now := m.now()
			*rec = record{Config: cfg, State: StateActive, CreateTime: now, UpdateTime: now, Op: ActionCreate}
			return true, nil
		},
	})
}

// Update replaces a pool's config (the caller merges any field mask first)
// and reconfigures the live pool: limits apply at once, endpoint or TLS
// changes bump the generation; nothing leased is cut. The state is kept.
// expectRevision 0 means any revision; otherwise it must equal the pool's
// Revision. An Update that changes nothing writes nothing.
//
// It returns a *ValidationError for a bad id or config, ErrPoolNotFound, a
// *RevisionMismatchError (ErrRevisionMismatch), ctx's error, and
// ErrPoolClosed after Close. An error from the live pool after the commit
// is returned wrapped; the stored config stands.
func (m *Manager) Update(ctx context.Context, id string, cfg Config, expectRevision int64, o WriteOptions) (PoolInfo, error) {
	if err := ValidatePoolID(id); err != nil {
		return PoolInfo{}, err
	}
	// A config that may take the stored key is validated once it has it,
	// under the write lock.
	keep := o.KeepClientKey && omitsClientKey(cfg.TLS) || o.KeepRedisPassword && omitsPassword(cfg) ||
		o.KeepPostgresPassword && omitsPostgresPassword(cfg)
	var err error
	if keep {
		cfg = cloneConfig(cfg)
	} else if cfg, err = prepare(cfg); err != nil {
		return PoolInfo{}, err
	}
	return m.write(ctx, id, o, write{
		expect: expectRevision,
		mutate: func(rec *record, _ bool) (bool, error) {
			if keep {
				keepStoredKey(rec.Config, &cfg, o.KeepClientKey, o.KeepRedisPassword, o.KeepPostgresPassword)
				if err := cfg.WithDefaults().Validate(); err != nil {
					return false, err
				}
			}
			if rec.Config.WithDefaults().Equal(cfg.WithDefaults()) {
				return false, nil
			}
			if err := m.checkWrite(cfg, ""); err != nil {
				return false, err
			}
			rec.Config, rec.UpdateTime, rec.Op = cfg, m.now(), ActionUpdate
			return true, nil
		},
		apply: func(rec record) error { return m.applyLive(id, rec, true, false) },
	})
}

// omitsClientKey reports whether t gives a client certificate but neither a
// client key nor a key file: a TLS config read back from the API.
func omitsClientKey(t TLSConfig) bool {
	return t.ClientCertPEM != "" && t.ClientKeyPEM == "" && t.ClientKeyFile == ""
}

// omitsPassword reports whether c is a REDIS config without a password: a
// config read back from the API, or one with no password at all.
func omitsPassword(c Config) bool {
	return c.Protocol == ProtocolRedis && c.Redis.Password == ""
}

// omitsPostgresPassword reports whether c is a POSTGRES config without a
// password: a config read back from the API, or one for trust
// authentication.
func omitsPostgresPassword(c Config) bool {
	return c.Protocol == ProtocolPostgres && c.Postgres.Password == ""
}

// keepStoredKey is the one rule by which the stored secrets, the client key
// and the Redis and PostgreSQL passwords, survive a write that omits them
// (the API never returns them, so a pool read back and written whole omits
// them).
//   - key: a cfg that gives the stored client certificate but neither a key
//     nor a key file takes the stored key. A new certificate, a key file or
//     a key of its own leaves cfg as it is.
//   - password: a REDIS cfg that gives the stored Redis username (empty for
//     the default user) but no password takes the stored password of a
//     stored REDIS config. A new username or a password of its own leaves
//     cfg as it is.
//   - pgPassword: a POSTGRES cfg that gives the stored user but no password
//     takes the stored password of a stored POSTGRES config. A new user or
//     a password of its own leaves cfg as it is.
//
// Callers hold the write lock and pass the config stored at the revision
// they write over.
func keepStoredKey(stored Config, cfg *Config, key, password, pgPassword bool) {
	if key && omitsClientKey(cfg.TLS) && cfg.TLS.ClientCertPEM == stored.TLS.ClientCertPEM {
		cfg.TLS.ClientKeyPEM = stored.TLS.ClientKeyPEM
	}
	if password && omitsPassword(*cfg) && stored.Protocol == ProtocolRedis && cfg.Redis.Username == stored.Redis.Username {
		cfg.Redis.Password = stored.Redis.Password
	}
	if pgPassword && omitsPostgresPassword(*cfg) && stored.Protocol == ProtocolPostgres && cfg.Postgres.User == stored.Postgres.User {
		cfg.Postgres.Password = stored.Postgres.Password
	}
}

// Rollback writes the config the pool had at revision toRevision (the
// version in effect then, as History lists) as a new revision, and applies
// it live. The state is kept; a deleted pool is re-created, ACTIVE. If the
// config is already current, nothing is written.
//
// It returns a *ValidationError for a bad id, for a revision at which the
// pool did not exist, or for a config that no longer validates;
// ErrRevisionNotFound if that revision is not retained; a
// *RevisionMismatchError if the pool changed concurrently; ctx's error; and
// ErrPoolClosed after Close.
func (m *Manager) Rollback(ctx context.Context, id string, toRevision int64, o WriteOptions) (PoolInfo, error) {
	if err := ValidatePoolID(id); err != nil {
		return PoolInfo{}, err
	}
	if toRevision <= 0 {
		return PoolInfo{}, badRevision(toRevision, "must be positive")
	}
	var cfg Config // the config at toRevision, read under the write lock
	return m.write(ctx, id, o, write{
		read: readEither,
		before: func() (err error) {
			cfg, err = m.configAt(ctx, id, toRevision)
			return err
		},
		mutate: func(rec *record, found bool) (bool, error) {
			now := m.now()
			if !found {
				*rec = record{Config: cfg, State: StateActive, CreateTime: now, UpdateTime: now, Op: ActionRollback}
				return true, nil
			}
			if rec.Config.Equal(cfg) {
				return false, nil
			}
			rec.Config, rec.UpdateTime, rec.Op = cfg, now, ActionRollback
			return true, nil
		},
		apply: func(rec record) error { return m.applyLive(id, rec, true, false) },
	})
}

// configAt returns the config pool id had at revision rev, prepared and
// checked for a write.
func (m *Manager) configAt(ctx context.Context, id string, rev int64) (Config, error) {
	e, err := m.store.HistoryAt(ctx, poolKey(id), rev)
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrCompacted):
		return Config{}, fmt.Errorf("pool %s at revision %d: %w: %w", id, rev, ErrRevisionNotFound, err)
	case errors.Is(err, store.ErrInvalidArgument):
		return Config{}, badRevision(rev, "is beyond the current revision")
	case err != nil:
		return Config{}, mapStoreErr(id, err)
	case e.Action == store.ActionDelete:
		return Config{}, badRevision(rev, fmt.Sprintf("pool %s did not exist at revision %d (deleted at %d)", id, rev, e.Revision))
	}
	old, err := decodeRecord(e.Value, m.sealer)
	if err != nil {
		return Config{}, fmt.Errorf("pool %s at revision %d: %w", id, rev, err)
	}
	cfg, err := prepare(old.Config)
	if err != nil {
		return Config{}, err
	}
	if err := m.checkWrite(cfg, ""); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Drain stores state DRAINING and drains the live pool: no new leases, idle
// connections closed, leases finish normally (see WaitDrained). Resume
// ends it. Errors are those of Update, without the config ones.
func (m *Manager) Drain(ctx context.Context, id string, o WriteOptions) (PoolInfo, error) {
	return m.setState(ctx, id, StateDraining, ActionDrain, o)
}

// Pause stores state PAUSED and pauses the live pool: new acquires wait
// until Resume. Errors are those of Drain.
func (m *Manager) Pause(ctx context.Context, id string, o WriteOptions) (PoolInfo, error) {
	return m.setState(ctx, id, StatePaused, ActionPause, o)
}

// Resume stores state ACTIVE and ends a Pause or Drain of the live pool.
// Errors are those of Drain.
func (m *Manager) Resume(ctx context.Context, id string, o WriteOptions) (PoolInfo, error) {
	return m.setState(ctx, id, StateActive, ActionResume, o)
}

// setState is Drain, Pause and Resume.
func (m *Manager) setState(ctx context.Context, id string, s State, op Action, o WriteOptions) (PoolInfo, error) {
	if err := ValidatePoolID(id); err != nil {
		return PoolInfo{}, err
	}
	return m.write(ctx, id, o, write{
		mutate: func(rec *record, _ bool) (bool, error) {
			if rec.State == s {
				return false, nil
			}
			rec.State, rec.UpdateTime, rec.Op = s, m.now(), op
			return true, nil
		},
		apply: func(rec record) error { return m.applyLive(id, rec, false, true) },
	})
}

// Reconnect recycles every connection of the pool gracefully by bumping
// its generation: idle connections close at once, leased ones on release.
// The generation is not persisted; the store records a RECONNECT revision
// (who and when) with the config and state unchanged. The returned
// Generation is the new one (see WaitGeneration). Errors are those of
// Drain.
func (m *Manager) Reconnect(ctx context.Context, id string, o WriteOptions) (PoolInfo, error) {
	if err := ValidatePoolID(id); err != nil {
		return PoolInfo{}, err
	}
	return m.write(ctx, id, o, write{
		mutate: func(rec *record, _ bool) (bool, error) {
			if o.ValidateOnly {
				return false, nil // a dry run has nothing to show: the stored version stands
			}
			rec.UpdateTime, rec.Op = m.now(), ActionReconnect
			return true, nil
		},
		apply: func(rec record) error {
			if p := m.lookup(id); p != nil {
				p.Reconnect()
				return nil
			}
			return m.startPool(id, rec)
		},
	})
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
