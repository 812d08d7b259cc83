package store

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Expect is a write precondition on a key's current state. The zero value
// is [Any].
type Expect struct {
	kind expectKind
	rev  int64
}

type expectKind uint8

const (
	expectAny expectKind = iota
	expectAbsent
	expectRevision
)

// Any returns the precondition that always holds.
func Any() Expect { return Expect{} }

// Absent returns the precondition that the key does not exist. A write
// whose key exists fails with an error wrapping ErrExists.
func Absent() Expect { return Expect{kind: expectAbsent} }

// AtRevision returns the precondition that the key exists with ModRevision
// rev. A write whose key has another ModRevision, or does not exist, fails
// with a *RevisionMismatchError. rev must be positive (else
// ErrInvalidArgument): use Absent to require that a key does not exist.
func AtRevision(rev int64) Expect { return Expect{kind: expectRevision, rev: rev} }

func (e Expect) validate() error {
	switch e.kind {
	case expectAny, expectAbsent:
		return nil
	case expectRevision:
		if e.rev > 0 {
			return nil
		}
		return fmt.Errorf("expected revision %d is not positive: %w", e.rev, ErrInvalidArgument)
	}
	return fmt.Errorf("unknown precondition %d: %w", e.kind, ErrInvalidArgument)
}

// Validate returns an error wrapping ErrInvalidArgument if e is malformed
// (an AtRevision that is not positive). Other backends of the store
// interface use it to refuse exactly what Store refuses.
func (e Expect) Validate() error { return e.validate() }

// Check tests e against a key's current state: cur if exists, else the key
// is absent. It returns nil if e holds, an error wrapping ErrExists or a
// *RevisionMismatchError if not. Other backends of the store interface use
// it to fail exactly as Store does.
func (e Expect) Check(key string, cur KeyValue, exists bool) error { return e.check(key, cur, exists) }

// check tests e against the key's current record (cur, ok).
func (e Expect) check(key string, cur KeyValue, ok bool) error {
	switch e.kind {
	case expectAbsent:
		if ok {
			return fmt.Errorf("key %q: %w", key, ErrExists)
		}
	case expectRevision:
		if !ok || cur.ModRevision != e.rev {
			return &RevisionMismatchError{Key: key, Expected: e.rev, Current: cur.ModRevision}
		}
	}
	return nil
}

// KeyValue is a key's state.
type KeyValue struct {
	Key            string
	Value          []byte
	CreateRevision int64 // revision that created the key
	ModRevision    int64 // revision that last changed it
	Version        int64 // number of puts since creation (1 after the first)
}

// OpKind is the kind of an [Op].
type OpKind int

// Op kinds.
const (
	OpPut OpKind = iota + 1
	OpDelete
)

// String returns "put" or "delete".
func (k OpKind) String() string {
	switch k {
	case OpPut:
		return "put"
	case OpDelete:
		return "delete"
	}
	return fmt.Sprintf("OpKind(%d)", int(k))
}

// Op is one write in a [Store.Txn].
type Op struct {
	Kind   OpKind
	Key    string
	Value  []byte // OpPut only
	Expect Expect
}

// Action says what a change did.
type Action int

// Actions.
const (
	ActionPut Action = iota + 1
	ActionDelete
)

// String returns "put" or "delete".
func (a Action) String() string {
	switch a {
	case ActionPut:
		return "put"
	case ActionDelete:
		return "delete"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// Put sets key to value if expect holds, and returns the new revision.
// The value is copied before Put returns.
//
// It returns an error wrapping ErrInvalidArgument for a bad key, value,
// actor or precondition, ErrExists or a *RevisionMismatchError when expect
// fails, ctx's error if ctx is done before the write starts, and ErrClosed
// after Close. The actor is recorded in history and events.
func (s *Store) Put(ctx context.Context, key string, value []byte, expect Expect, actor string) (int64, error) {
	return s.Txn(ctx, []Op{{Kind: OpPut, Key: key, Value: value, Expect: expect}}, actor)
}

// Delete removes key if expect holds, and returns the new revision. The
// key's history is kept; a later Put re-creates the key with a new
// CreateRevision and continues the history.
//
// It returns an error wrapping ErrNotFound if the key does not exist, and
// otherwise the same errors as Put.
func (s *Store) Delete(ctx context.Context, key string, expect Expect, actor string) (int64, error) {
	return s.Txn(ctx, []Op{{Kind: OpDelete, Key: key, Expect: expect}}, actor)
}

// Txn applies ops atomically, all at one new revision, and returns it.
// Either every op applies or none does: if any precondition fails, or an
// OpDelete names an absent key, the whole Txn fails with that op's error
// (ErrExists, *RevisionMismatchError, ErrNotFound) and the revision does
// not move. Each key may appear at most once.
//
// It returns an error wrapping ErrInvalidArgument for an empty op list, a
// repeated key, an unknown op kind or a bad key, value, actor or
// precondition; ctx's error if ctx is done before the write starts; and
// ErrClosed after Close.
func (s *Store) Txn(ctx context.Context, ops []Op, actor string) (int64, error) {
	if err := validateOps(ops, actor); err != nil {
		return 0, err
	}
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	var rev int64
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		rev, err = s.applyLocked(tx, ops, actor)
		return err
	})
	if err != nil {
		return 0, mapClosed(err)
	}
	s.broadcast()
	return rev, nil
}

func validateOps(ops []Op, actor string) error {
	if len(ops) == 0 {
		return fmt.Errorf("empty txn: %w", ErrInvalidArgument)
	}
	if err := validateActor(actor); err != nil {
		return err
	}
	seen := make(map[string]struct{}, len(ops))
	for i, op := range ops {
		if op.Kind != OpPut && op.Kind != OpDelete {
			return fmt.Errorf("op %d: unknown kind %d: %w", i, op.Kind, ErrInvalidArgument)
		}
		if err := validateKey(op.Key); err != nil {
			return fmt.Errorf("op %d: %w", i, err)
		}
		if err := validateValue(op.Value); err != nil {
			return fmt.Errorf("op %d: %w", i, err)
		}
		if err := op.Expect.validate(); err != nil {
			return fmt.Errorf("op %d: %w", i, err)
		}
		if _, dup := seen[op.Key]; dup {
			return fmt.Errorf("op %d: key %q repeated in txn: %w", i, op.Key, ErrInvalidArgument)
		}
		seen[op.Key] = struct{}{}
	}
	return nil
}

// applyLocked applies validated ops in tx, the only open write transaction
// (bbolt's writer lock is the "lock" held), and returns the new revision.
func (s *Store) applyLocked(tx *bolt.Tx, ops []Op, actor string) (int64, error) {
	meta, kvs, hist, log := tx.Bucket(bucketMeta), tx.Bucket(bucketKV), tx.Bucket(bucketHistory), tx.Bucket(bucketLog)
	rev := currentRevision(tx) + 1
	now := s.now()
	evs := make([]Event, 0, len(ops))
	for _, op := range ops {
		var cur KeyValue
		raw := kvs.Get([]byte(op.Key))
		ok := raw != nil
		if ok {
			var err error
			if cur, err = decodeKV(op.Key, raw); err != nil {
				return 0, err
			}
		}
		if err := op.Expect.check(op.Key, cur, ok); err != nil {
			return 0, err
		}
		entry := HistoryEntry{Revision: rev, Time: now, Actor: actor}
		var ev Event
		switch op.Kind {
		case OpPut:
			next := KeyValue{Key: op.Key, Value: op.Value, CreateRevision: cur.CreateRevision, ModRevision: rev, Version: cur.Version + 1}
			if !ok {
				next.CreateRevision, next.Version = rev, 1
			}
			if err := kvs.Put([]byte(op.Key), encodeKV(next)); err != nil {
				return 0, fmt.Errorf("put %q: %w", op.Key, err)
			}
			entry.Action, entry.Value = ActionPut, op.Value
			ev = Event{Action: ActionPut, KV: next}
		case OpDelete:
			if !ok {
				return 0, fmt.Errorf("delete %q: %w", op.Key, ErrNotFound)
			}
			if err := kvs.Delete([]byte(op.Key)); err != nil {
				return 0, fmt.Errorf("delete %q: %w", op.Key, err)
			}
			entry.Action = ActionDelete
			ev = Event{Action: ActionDelete, KV: cur}
		}
		if err := s.appendHistoryLocked(hist, op.Key, entry); err != nil {
			return 0, err
		}
		evs = append(evs, ev)
	}
	if err := log.Put(itob(rev), encodeLog(now, actor, evs)); err != nil {
		return 0, fmt.Errorf("append change log: %w", err)
	}
	if err := meta.Put(metaRevision, itob(rev)); err != nil {
		return 0, fmt.Errorf("record revision: %w", err)
	}
	if err := s.compactLogLocked(meta, log, rev); err != nil {
		return 0, err
	}
	return rev, nil
}

// appendHistoryLocked records e for key and discards the oldest entries
// beyond the history limit.
func (s *Store) appendHistoryLocked(hist *bolt.Bucket, key string, e HistoryEntry) error {
	prefix := historyPrefix(key)
	markerKey := historyKey(prefix, 0)
	var m marker
	if v := hist.Get(markerKey); v != nil {
		var err error
		if m, err = decodeMarker(v); err != nil {
			return fmt.Errorf("key %q: %w", key, err)
		}
	}
	if err := hist.Put(historyKey(prefix, e.Revision), encodeHistory(e)); err != nil {
		return fmt.Errorf("append history of %q: %w", key, err)
	}
	m.count++
	if m.count > s.historyLimit {
		// Collect first: deleting under a moving cursor can skip keys.
		var drop [][]byte
		c := hist.Cursor()
		for k, _ := c.Seek(historyKey(prefix, 1)); k != nil && bytes.HasPrefix(k, prefix) && m.count > s.historyLimit; k, _ = c.Next() {
			drop = append(drop, k)
			m.trimmed = btoi(k[len(prefix):])
			m.count--
		}
		for _, k := range drop {
			if err := hist.Delete(k); err != nil {
				return fmt.Errorf("trim history of %q: %w", key, err)
			}
		}
	}
	if err := hist.Put(markerKey, encodeMarker(m)); err != nil {
		return fmt.Errorf("history marker of %q: %w", key, err)
	}
	return nil
}

// compactLogLocked drops change log entries older than the log limit.
func (s *Store) compactLogLocked(meta, log *bolt.Bucket, rev int64) error {
	target := rev - s.logLimit
	compacted := int64(0)
	if v := meta.Get(metaCompacted); len(v) == 8 {
		compacted = btoi(v)
	}
	if target <= compacted {
		return nil
	}
	var drop [][]byte
	c := log.Cursor()
	for k, _ := c.Seek(itob(compacted + 1)); k != nil && btoi(k) <= target; k, _ = c.Next() {
		drop = append(drop, k)
	}
	for _, k := range drop {
		if err := log.Delete(k); err != nil {
			return fmt.Errorf("compact change log: %w", err)
		}
	}
	if err := meta.Put(metaCompacted, itob(target)); err != nil {
		return fmt.Errorf("record compaction: %w", err)
	}
	return nil
}

// Get returns key's current state. It returns an error wrapping
// ErrNotFound if the key does not exist, ErrInvalidArgument for a bad key,
// ctx's error if ctx is done, and ErrClosed after Close.
func (s *Store) Get(ctx context.Context, key string) (KeyValue, error) {
	if err := validateKey(key); err != nil {
		return KeyValue{}, err
	}
	var kv KeyValue
	err := s.view(ctx, func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketKV).Get([]byte(key))
		if raw == nil {
			return fmt.Errorf("get %q: %w", key, ErrNotFound)
		}
		var err error
		kv, err = decodeKV(key, raw)
		return err
	})
	return kv, err
}

// List returns the keys starting with prefix ("" for all), sorted by key,
// at most pageSize of them (pageSize <= 0 means all). If more remain,
// nextPageToken is non-empty: pass it back with the same prefix to get the
// next page. Each page is a consistent snapshot on its own; use Snapshot
// for one consistent read of a whole prefix with its revision.
//
// It returns an error wrapping ErrInvalidArgument for a malformed token or
// one from another prefix, ctx's error if ctx is done, and ErrClosed after
// Close.
func (s *Store) List(ctx context.Context, prefix string, pageSize int, pageToken string) ([]KeyValue, string, error) {
	var after string
	if pageToken != "" {
		var err error
		if after, err = decodePageToken(pageToken, prefix); err != nil {
			return nil, "", err
		}
	}
	var (
		kvs  []KeyValue
		more bool
	)
	err := s.view(ctx, func(tx *bolt.Tx) error {
		var err error
		kvs, more, err = listLocked(tx, prefix, after, pageToken != "", pageSize)
		return err
	})
	if err != nil {
		return nil, "", err
	}
	if more {
		return kvs, encodePageToken(kvs[len(kvs)-1].Key), nil
	}
	return kvs, "", nil
}

// Snapshot returns every key starting with prefix, sorted by key, and the
// revision they reflect, read in one transaction. Watch(ctx, rev) then
// delivers exactly the changes made after the snapshot. It returns ctx's
// error if ctx is done and ErrClosed after Close.
func (s *Store) Snapshot(ctx context.Context, prefix string) ([]KeyValue, int64, error) {
	var (
		kvs []KeyValue
		rev int64
	)
	err := s.view(ctx, func(tx *bolt.Tx) error {
		var err error
		kvs, _, err = listLocked(tx, prefix, "", false, 0)
		rev = currentRevision(tx)
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	return kvs, rev, nil
}

// listLocked reads up to limit (all if <= 0) keys with prefix, starting
// after the key after if hasAfter. more reports whether keys remain.
func listLocked(tx *bolt.Tx, prefix, after string, hasAfter bool, limit int) (kvs []KeyValue, more bool, err error) {
	c := tx.Bucket(bucketKV).Cursor()
	var k, v []byte
	if hasAfter {
		k, v = c.Seek([]byte(after))
		if k != nil && string(k) == after {
			k, v = c.Next()
		}
	} else {
		k, v = c.Seek([]byte(prefix))
	}
	for ; k != nil && strings.HasPrefix(string(k), prefix); k, v = c.Next() {
		if limit > 0 && len(kvs) == limit {
			return kvs, true, nil
		}
		kv, err := decodeKV(string(k), v)
		if err != nil {
			return nil, false, err
		}
		kvs = append(kvs, kv)
	}
	return kvs, false, nil
}

// HistoryEntry is one retained version of a key.
type HistoryEntry struct {
	Revision int64     // the revision of the change
	Time     time.Time // when it was committed (Options.Now), UTC
	Action   Action
	Value    []byte // the value put; nil for ActionDelete
	Actor    string // who made the change, as given to the write
}

// History returns the retained versions of key, oldest first: at most
// Options.HistoryLimit of them, deletes included. History outlives a
// delete, and a re-created key continues it.
//
// It returns an error wrapping ErrNotFound if the key never had a change
// recorded, ErrInvalidArgument for a bad key, ctx's error if ctx is done,
// and ErrClosed after Close.
func (s *Store) History(ctx context.Context, key string) ([]HistoryEntry, error) {
	if err := validateKey(key); err != nil {
		return nil, err
	}
	var out []HistoryEntry
	err := s.view(ctx, func(tx *bolt.Tx) error {
		prefix := historyPrefix(key)
		c := tx.Bucket(bucketHistory).Cursor()
		for k, v := c.Seek(historyKey(prefix, 1)); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			e, err := decodeHistory(btoi(k[len(prefix):]), v)
			if err != nil {
				return fmt.Errorf("key %q: %w", key, err)
			}
			out = append(out, e)
		}
		if len(out) == 0 {
			return fmt.Errorf("history of %q: %w", key, ErrNotFound)
		}
		return nil
	})
	return out, err
}

// HistoryAt returns the version of key in effect at revision rev: the
// latest retained entry with Revision <= rev. An entry with ActionDelete
// means the key did not exist at rev.
//
// It returns an error wrapping ErrNotFound if the key had no change at or
// before rev, *CompactedError (ErrCompacted) if that part of the key's
// history was discarded (Oldest is the key's oldest retained revision),
// ErrInvalidArgument for a bad key or a rev that is not positive or is
// beyond the current revision, ctx's error if ctx is done, and ErrClosed
// after Close.
func (s *Store) HistoryAt(ctx context.Context, key string, rev int64) (HistoryEntry, error) {
	if err := validateKey(key); err != nil {
		return HistoryEntry{}, err
	}
	if rev <= 0 {
		return HistoryEntry{}, fmt.Errorf("revision %d is not positive: %w", rev, ErrInvalidArgument)
	}
	var out HistoryEntry
	err := s.view(ctx, func(tx *bolt.Tx) error {
		if cur := currentRevision(tx); rev > cur {
			return fmt.Errorf("revision %d is beyond the current revision %d: %w", rev, cur, ErrInvalidArgument)
		}
		hist := tx.Bucket(bucketHistory)
		prefix := historyPrefix(key)
		mv := hist.Get(historyKey(prefix, 0))
		if mv == nil {
			return fmt.Errorf("history of %q: %w", key, ErrNotFound)
		}
		m, err := decodeMarker(mv)
		if err != nil {
			return fmt.Errorf("key %q: %w", key, err)
		}
		c := hist.Cursor()
		target := historyKey(prefix, rev)
		k, v := c.Seek(target)
		if !bytes.Equal(k, target) {
			// Step back to the latest entry before rev. The marker at
			// revision 0 sorts before every entry of the key.
			if k == nil {
				k, v = c.Last()
			} else {
				k, v = c.Prev()
			}
		}
		if k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8 {
			if r := btoi(k[len(prefix):]); r > 0 {
				out, err = decodeHistory(r, v)
				if err != nil {
					return fmt.Errorf("key %q: %w", key, err)
				}
				return nil
			}
		}
		if m.trimmed > 0 {
			oldest := m.trimmed + 1
			if k, _ := c.Seek(historyKey(prefix, 1)); k != nil && bytes.HasPrefix(k, prefix) {
				oldest = btoi(k[len(prefix):])
			}
			return fmt.Errorf("history of %q: %w", key, &CompactedError{Requested: rev, Oldest: oldest})
		}
		return fmt.Errorf("history of %q at revision %d: %w", key, rev, ErrNotFound)
	})
	return out, err
}
