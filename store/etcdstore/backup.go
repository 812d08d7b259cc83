package etcdstore

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/poolplane/poolplane/store"
)

// BackupContext writes a backup of the configuration under the prefix
// to w, in the file format of package store: a bbolt store file that
// store.Open reads and that poold --store bolt starts from, the artifact
// a bbolt poold's backup is. It returns the number of bytes written.
//
// The file holds every key with its value, CreateRevision, ModRevision
// and Version, every retained history entry (revision, time, action,
// value, actor) with the trimmed marker that makes HistoryAt report
// ErrCompacted before it, and etcd's revision at the read as the store's
// revision: all read in one etcd transaction, at one revision. It leaves
// out what has no place in the bbolt store: the replica set, and the
// change log (a Watch on the restored file from a revision before the
// backup fails with ErrCompacted). The history kept per key is this
// store's HistoryLimit.
//
// The file is built in a temporary directory, removed before it returns.
// It returns ctx's error if ctx ends first, store.ErrClosed after Close,
// and the etcd client's errors. Safe for concurrent use.
func (s *Store) BackupContext(ctx context.Context, w io.Writer) (int64, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	keys, rev, err := s.readAll(ctx)
	if err != nil {
		return 0, err
	}
	dir, err := os.MkdirTemp("", "poolplane-etcd-backup-")
	if err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	defer func() { _ = os.RemoveAll(dir) }()
	bs, err := store.Open(filepath.Join(dir, "poolplane.db"), store.Options{HistoryLimit: s.historyLimit, Now: s.now})
	if err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	defer func() { _ = bs.Close() }() // the backup's error, if any, is the one to report
	if rev == 0 {
		// An etcd cluster that never saw a write: an empty file.
		return bs.Backup(w)
	}
	if err := bs.Import(ctx, rev, keys); err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	n, err := bs.Backup(w)
	if err != nil {
		return n, err
	}
	if err := bs.Close(); err != nil {
		return n, fmt.Errorf("backup: %w", err)
	}
	return n, nil
}

// readAll reads every key, history entry and history marker under the
// prefix in one etcd transaction, and returns them as store.ImportKeys,
// sorted by key, with the revision of the read.
func (s *Store) readAll(ctx context.Context) ([]store.ImportKey, int64, error) {
	c, cancel := s.opCtx(ctx)
	defer cancel()
	sorted := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}
	resp, err := s.cli.Txn(c).Then(
		clientv3.OpGet(s.kvPrefix, sorted...),
		clientv3.OpGet(s.histPrefix, sorted...),
		clientv3.OpGet(s.markPrefix, sorted...),
	).Commit()
	if err != nil {
		return nil, 0, fmt.Errorf("backup: %w", s.mapErr(ctx, err))
	}
	byKey := map[string]*store.ImportKey{}
	get := func(key string) *store.ImportKey {
		k := byKey[key]
		if k == nil {
			k = &store.ImportKey{Key: key}
			byKey[key] = k
		}
		return k
	}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		cur := s.toKV(kv)
		get(cur.Key).Current = &cur
	}
	// Entries sort by key, then by sequence: each key's oldest first.
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		key, ok := s.keyOfHist(string(kv.Key))
		if !ok {
			return nil, 0, fmt.Errorf("backup: history entry %q: %w", kv.Key, errCorrupt)
		}
		e, err := decodeHistEntry(kv.Value)
		if err != nil {
			return nil, 0, fmt.Errorf("backup: history entry %q: %w", kv.Key, err)
		}
		k := get(key)
		k.History = append(k.History, e.toStore(kv.CreateRevision))
	}
	for _, kv := range resp.Responses[2].GetResponseRange().Kvs {
		key := strings.TrimPrefix(string(kv.Key), s.markPrefix)
		get(key).Trimmed = decodeMarker(kv.Value).trimmed
	}
	keys := make([]store.ImportKey, 0, len(byKey))
	for _, k := range byKey {
		keys = append(keys, *k)
	}
	slices.SortFunc(keys, func(a, b store.ImportKey) int { return strings.Compare(a.Key, b.Key) })
	return keys, resp.Header.Revision, nil
}
