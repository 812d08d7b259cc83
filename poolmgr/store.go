package poolmgr

import (
	"context"

	"github.com/poolplane/poolplane/store"
)

// Store is the persistence the Manager needs: the subset of *store.Store's
// methods it calls, declared here so that another backend (etcd) can stand
// behind the same interface. Implementations must be safe for concurrent
// use and must give every write a new, globally increasing revision, with
// the preconditions and errors documented in package store.
type Store interface {
	// Put writes key if expect holds and returns the new revision.
	Put(ctx context.Context, key string, value []byte, expect store.Expect, actor string) (int64, error)
	// Get returns key's current state, or an error wrapping store.ErrNotFound.
	Get(ctx context.Context, key string) (store.KeyValue, error)
	// List returns one page of the keys under prefix, sorted by key.
	List(ctx context.Context, prefix string, pageSize int, pageToken string) ([]store.KeyValue, string, error)
	// Snapshot returns every key under prefix and the revision they
	// reflect, read at once.
	Snapshot(ctx context.Context, prefix string) ([]store.KeyValue, int64, error)
	// Delete removes key if expect holds and returns the new revision.
	Delete(ctx context.Context, key string, expect store.Expect, actor string) (int64, error)
	// Txn applies ops atomically at one new revision, all or none.
	Txn(ctx context.Context, ops []store.Op, actor string) (int64, error)
	// Revision returns the current global revision.
	Revision(ctx context.Context) (int64, error)
	// History returns key's retained versions, oldest first.
	History(ctx context.Context, key string) ([]store.HistoryEntry, error)
	// HistoryAt returns the version of key in effect at rev.
	HistoryAt(ctx context.Context, key string, rev int64) (store.HistoryEntry, error)
	// Watch delivers every change with a revision above fromRevision, then
	// live ones, until ctx ends or the store closes.
	Watch(ctx context.Context, fromRevision int64) (<-chan store.Event, error)
}

// keyPrefix is the store prefix of pool records: pool id maps to
// keyPrefix+id. Part of the storage format.
const keyPrefix = "pools/"

func poolKey(id string) string { return keyPrefix + id }
