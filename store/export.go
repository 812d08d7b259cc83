package store

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// Export reads every key with its current state, its retained history and
// where that history was trimmed, and the store's revision, all in one
// read transaction: the counterpart of [Store.Import], and what another
// backend of the store interface needs to hold the same data. Keys come
// sorted; a key with a nil Current was deleted and only its history
// remains. Every History is oldest first.
//
// It returns ctx's error if ctx is done, ErrClosed after Close, and an
// error wrapping the store's corruption error for a record that does not
// decode. It works on a store opened with Options.ReadOnly.
func (s *Store) Export(ctx context.Context) ([]ImportKey, int64, error) {
	var (
		keys []ImportKey
		rev  int64
	)
	err := s.view(ctx, func(tx *bolt.Tx) error {
		rev = currentRevision(tx)
		byKey := map[string]*ImportKey{}
		get := func(key string) *ImportKey {
			k := byKey[key]
			if k == nil {
				k = &ImportKey{Key: key}
				byKey[key] = k
			}
			return k
		}
		kvs, _, err := listLocked(tx, "", "", false, 0)
		if err != nil {
			return err
		}
		for _, kv := range kvs {
			get(kv.Key).Current = &kv
		}
		// History keys sort by key length, key, then revision: the marker
		// (revision 0) first, then the entries oldest first.
		c := tx.Bucket(bucketHistory).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			key, hrev, ok := splitHistoryKey(k)
			if !ok {
				return fmt.Errorf("history key %x: %w", k, errCorrupt)
			}
			ik := get(key)
			if hrev == 0 {
				m, err := decodeMarker(v)
				if err != nil {
					return fmt.Errorf("key %q: %w", key, err)
				}
				ik.Trimmed = m.trimmed
				continue
			}
			e, err := decodeHistory(hrev, v)
			if err != nil {
				return fmt.Errorf("key %q: %w", key, err)
			}
			ik.History = append(ik.History, e)
		}
		keys = make([]ImportKey, 0, len(byKey))
		for _, k := range byKey {
			keys = append(keys, *k)
		}
		slices.SortFunc(keys, func(a, b ImportKey) int { return strings.Compare(a.Key, b.Key) })
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return keys, rev, nil
}

// splitHistoryKey splits a history bucket key (see historyPrefix) into
// the store key and the revision (0 for the marker).
func splitHistoryKey(k []byte) (string, int64, bool) {
	if len(k) < 2 {
		return "", 0, false
	}
	n := int(binary.BigEndian.Uint16(k))
	if len(k) != 2+n+8 {
		return "", 0, false
	}
	return string(k[2 : 2+n]), btoi(k[2+n:]), true
}
