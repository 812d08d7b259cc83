package store

import (
	"context"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// ImportKey is one key's state and retained history, as another backend
// of the store interface held them, for [Store.Import].
type ImportKey struct {
	// Key is the key.
	Key string
	// Current is the key's state; nil if the key does not exist (it was
	// deleted, and only its history remains). Its revisions and version
	// are kept as given.
	Current *KeyValue
	// History is the key's retained versions, oldest first, with their
	// own revisions, times, actions, values and actors.
	History []HistoryEntry
	// Trimmed is the highest revision of the key's history discarded
	// before History[0], 0 if none: HistoryAt before the oldest entry then
	// fails with ErrCompacted rather than ErrNotFound.
	Trimmed int64
}

// Import fills an empty store with keys, as another store held them at
// revision rev (a consistent read of it), and sets the global revision
// to rev: every key keeps its CreateRevision, ModRevision and Version,
// every history entry its revision, and the next write gets rev+1. It
// is how a backup of the etcd store becomes a file this package opens.
//
// The change log starts empty at rev: Watch from rev or later works,
// Watch from an earlier revision fails with ErrCompacted. History beyond
// Options.HistoryLimit is trimmed, oldest first, as a write would.
// Everything is written in one transaction, all or nothing.
//
// It returns an error wrapping ErrInvalidArgument if the store is not
// empty (it has a revision or keys), if rev is not positive, or if a key
// is malformed: a bad or repeated key or value, revisions that are not
// positive, beyond rev, out of order (CreateRevision <= ModRevision,
// history strictly increasing and after Trimmed), a Current whose Key
// differs, or an unknown action. It returns ctx's error if ctx is done
// before the write starts, and ErrClosed after Close.
func (s *Store) Import(ctx context.Context, rev int64, keys []ImportKey) error {
	if rev <= 0 {
		return fmt.Errorf("import at revision %d: not positive: %w", rev, ErrInvalidArgument)
	}
	seen := make(map[string]struct{}, len(keys))
	for i := range keys {
		if err := validateImportKey(&keys[i], rev); err != nil {
			return fmt.Errorf("import: %w", err)
		}
		if _, dup := seen[keys[i].Key]; dup {
			return fmt.Errorf("import: key %q repeated: %w", keys[i].Key, ErrInvalidArgument)
		}
		seen[keys[i].Key] = struct{}{}
	}
	if err := s.check(ctx); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta, kvs, hist := tx.Bucket(bucketMeta), tx.Bucket(bucketKV), tx.Bucket(bucketHistory)
		if k, _ := kvs.Cursor().First(); k != nil || currentRevision(tx) != 0 {
			return fmt.Errorf("import into a store that is not empty: %w", ErrInvalidArgument)
		}
		if k, _ := hist.Cursor().First(); k != nil {
			return fmt.Errorf("import into a store that is not empty: %w", ErrInvalidArgument)
		}
		for _, k := range keys {
			if err := s.importKeyLocked(kvs, hist, k); err != nil {
				return err
			}
		}
		if err := meta.Put(metaRevision, itob(rev)); err != nil {
			return fmt.Errorf("import: record revision: %w", err)
		}
		// The log holds nothing up to rev.
		if err := meta.Put(metaCompacted, itob(rev)); err != nil {
			return fmt.Errorf("import: record compaction: %w", err)
		}
		return nil
	})
	if err != nil {
		return mapClosed(err)
	}
	s.broadcast()
	return nil
}

// validateImportKey checks k against the rules Import documents.
func validateImportKey(k *ImportKey, rev int64) error {
	if err := validateKey(k.Key); err != nil {
		return err
	}
	if c := k.Current; c != nil {
		if c.Key != k.Key {
			return fmt.Errorf("key %q: current state of %q: %w", k.Key, c.Key, ErrInvalidArgument)
		}
		if err := validateValue(c.Value); err != nil {
			return fmt.Errorf("key %q: %w", k.Key, err)
		}
		if c.CreateRevision <= 0 || c.ModRevision < c.CreateRevision || c.ModRevision > rev || c.Version <= 0 {
			return fmt.Errorf("key %q: revisions create %d, mod %d, version %d at revision %d: %w",
				k.Key, c.CreateRevision, c.ModRevision, c.Version, rev, ErrInvalidArgument)
		}
	}
	if k.Trimmed < 0 || k.Trimmed > rev {
		return fmt.Errorf("key %q: trimmed revision %d: %w", k.Key, k.Trimmed, ErrInvalidArgument)
	}
	last := k.Trimmed
	for _, e := range k.History {
		if e.Revision <= last || e.Revision > rev {
			return fmt.Errorf("key %q: history entry at revision %d after %d (import at %d): %w", k.Key, e.Revision, last, rev, ErrInvalidArgument)
		}
		last = e.Revision
		if e.Action != ActionPut && e.Action != ActionDelete {
			return fmt.Errorf("key %q: history entry at revision %d: unknown action %d: %w", k.Key, e.Revision, e.Action, ErrInvalidArgument)
		}
		if err := validateValue(e.Value); err != nil {
			return fmt.Errorf("key %q: history entry at revision %d: %w", k.Key, e.Revision, err)
		}
		if err := validateActor(e.Actor); err != nil {
			return fmt.Errorf("key %q: history entry at revision %d: %w", k.Key, e.Revision, err)
		}
	}
	return nil
}

// importKeyLocked writes one validated key in Import's transaction.
func (s *Store) importKeyLocked(kvs, hist *bolt.Bucket, k ImportKey) error {
	if k.Current != nil {
		if err := kvs.Put([]byte(k.Key), encodeKV(*k.Current)); err != nil {
			return fmt.Errorf("import %q: %w", k.Key, err)
		}
	}
	entries, m := slices.Clone(k.History), marker{trimmed: k.Trimmed}
	if n := int64(len(entries)) - s.historyLimit; n > 0 {
		m.trimmed = entries[n-1].Revision
		entries = entries[n:]
	}
	if len(entries) == 0 && m.trimmed == 0 {
		return nil
	}
	prefix := historyPrefix(k.Key)
	for _, e := range entries {
		if e.Action == ActionDelete {
			e.Value = nil
		}
		if err := hist.Put(historyKey(prefix, e.Revision), encodeHistory(e)); err != nil {
			return fmt.Errorf("import history of %q: %w", k.Key, err)
		}
	}
	m.count = int64(len(entries))
	if err := hist.Put(historyKey(prefix, 0), encodeMarker(m)); err != nil {
		return fmt.Errorf("import history marker of %q: %w", k.Key, err)
	}
	return nil
}
